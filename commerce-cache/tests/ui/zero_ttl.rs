#![allow(unused_variables)]

use commerce_cache::{cached, TwoLevelCache};

#[cached(cache = cache, key = "product:{id}", ttl = "0s")]
async fn product(cache: &TwoLevelCache<String>, id: i64, name: &str) -> Result<Option<String>, std::io::Error> {
    Ok(Some(id.to_string()))
}

fn main() {}
