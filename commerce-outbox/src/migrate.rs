//! The crate's embedded migrations.

use sqlx::migrate::Migrator;

/// Creates the `commerce_outbox` schema and its tables.
///
/// `ignore_missing` is set: several crates' migrators share one database's
/// `_sqlx_migrations` table, so this one must not fail on versions applied by the others.
/// Its file names are timestamp-prefixed so they never collide with theirs.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
/// commerce_outbox::MIGRATOR.run(&pool).await?;
/// # Ok(()) }
/// ```
pub static MIGRATOR: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations")
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrator_tolerates_other_crates_migrations() {
        assert!(MIGRATOR.ignore_missing);
        assert!(MIGRATOR.iter().all(|m| m.version >= 20_261_128_000_000));
    }
}
