#![allow(unused_variables)]

use commerce_cache::{cache_evict, TwoLevelCache};

#[cache_evict(cache = cache, key = "product:{id}", ttl = "60s")]
async fn delete(cache: &TwoLevelCache<String>, id: i64) -> Result<(), std::io::Error> {
    let _ = id;
    Ok(())
}

fn main() {}
