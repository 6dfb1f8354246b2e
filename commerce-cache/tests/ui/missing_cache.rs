#![allow(unused_variables)]

use commerce_cache::cached;

#[cached(key = "product:{id}")]
async fn product(id: i64) -> Result<Option<String>, std::io::Error> {
    Ok(Some(id.to_string()))
}

fn main() {}
