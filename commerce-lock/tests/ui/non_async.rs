#![allow(unused_variables)]

use commerce_lock::redis_lock;

#[redis_lock(key = "stock:{product_id}")]
fn reserve(lock: &commerce_lock::RedisLock, product_id: u64) -> Result<(), commerce_lock::Error> {
    let _ = (lock, product_id);
    Ok(())
}

fn main() {}
