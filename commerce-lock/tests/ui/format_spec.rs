#![allow(unused_variables)]

use commerce_lock::redis_lock;

#[redis_lock(key = "stock:{product_id:?}")]
async fn reserve(lock: &commerce_lock::RedisLock, product_id: u64, warehouse: &str) -> Result<(), commerce_lock::Error> {
    let _ = (product_id, warehouse);
    Ok(())
}

fn main() {}
