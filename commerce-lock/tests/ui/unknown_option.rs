#![allow(unused_variables)]

use commerce_lock::redis_lock;

#[redis_lock(key = "stock:{product_id}", timeout = "2s")]
async fn reserve(lock: &commerce_lock::RedisLock, product_id: u64) -> Result<(), commerce_lock::Error> {
    let _ = product_id;
    Ok(())
}

fn main() {}
