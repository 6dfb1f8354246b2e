#![allow(unused_variables)]

use commerce_cache::{cached, TwoLevelCache};

#[cached(cache = cache, key = "product:{id}")]
async fn product(cache: &TwoLevelCache<String>, id: i64) -> Option<String> {
    Some(id.to_string())
}

fn main() {}
