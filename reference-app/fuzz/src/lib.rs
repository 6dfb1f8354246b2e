//! The properties the fuzz targets check, over the decoding the reference app's handlers use
//! for JSON bodies: `commerce_client::decode` (what the app's `Json` extractor runs on the
//! body's bytes) into commerce-client's request types, and for an order, commerce-core's
//! `ValidatedOrder::new` (what `Commerce::place_order` checks before it touches the database).
//!
//! Every input must end in a typed answer: a value of the request type, written as JSON
//! objects (no struct taken from an array), which re-encodes and decodes to itself; or a typed
//! refusal of the kind the API documents (`Syntax`, 400 `invalid_json`, exactly for bytes that
//! are not well-formed JSON; `Shape`, 422 `validation_failed`, with where and why, for the
//! rest). An order the decoder accepts is refused by the validation exactly when it breaks a
//! documented limit. Anything else (a panic, an `unreachable!`, a stack overflow) is a crash
//! for libFuzzer.

use commerce_client::{
    CreateProduct, DecodeError, Inbound, PlaceOrder, RenameProduct, Shortage, MAX_LINES,
    MAX_QUANTITY,
};
use commerce_core::strategy::ValidatedOrder;
use commerce_core::{NewOrder, OrderLimits, ShortagePolicy};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Checks one body decoded as `T`: a value that round-trips and was written as a JSON object,
/// or a typed refusal of the documented kind. Returns the value, if any, for further checks.
///
/// # Panics
/// When the property does not hold (a crash for libFuzzer).
pub fn check_decoding<T>(body: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let json = serde_json::from_slice::<Value>(body).ok();
    match commerce_client::decode::<T>(body) {
        Ok(value) => {
            assert!(
                json.as_ref().is_some_and(objects_only),
                "decoded from something other than JSON objects: {:?}",
                String::from_utf8_lossy(body)
            );
            let encoded = serde_json::to_vec(&value).expect("a decoded request encodes");
            let again = commerce_client::decode::<T>(&encoded)
                .unwrap_or_else(|e| panic!("{value:?} re-encoded does not decode: {e}"));
            assert_eq!(again, value, "a decoded request round-trips");
            Some(value)
        }
        Err(DecodeError::Syntax(reason)) => {
            assert!(json.is_none(), "well-formed JSON refused as a syntax error: {reason}");
            assert!(!reason.is_empty(), "a refusal says why");
            None
        }
        Err(DecodeError::Shape { reason, .. }) => {
            // (The path may be empty: a field named "" is where.)
            assert!(json.is_some(), "bytes that are not JSON refused as a shape error");
            assert!(!reason.is_empty(), "a refusal says why");
            None
        }
    }
}

/// Whether `json` is an object whose arrays hold no arrays: the request types have no
/// array of arrays, so an accepted body with one took a struct from an array.
fn objects_only(json: &Value) -> bool {
    fn no_nested_arrays(value: &Value) -> bool {
        match value {
            Value::Array(items) => items
                .iter()
                .all(|item| !item.is_array() && no_nested_arrays(item)),
            Value::Object(fields) => fields.values().all(no_nested_arrays),
            _ => true,
        }
    }
    json.is_object() && no_nested_arrays(json)
}

/// The order placement body: decoding as [`check_decoding`], then commerce-core's validation,
/// which must refuse the order exactly when it breaks a documented limit (1 to 100 lines,
/// quantities 1 to 10000, each product once), with the typed error for it.
///
/// # Panics
/// When the property does not hold.
pub fn check_place_order(body: &[u8]) {
    let Some(order) = check_decoding::<PlaceOrder>(body) else {
        return;
    };
    let mut request = NewOrder::new("fuzz").policy(match order.on_shortage {
        Shortage::Reject => ShortagePolicy::Reject,
        Shortage::Backorder => ShortagePolicy::Backorder,
    });
    for item in &order.items {
        request = request.line(item.product_id, item.quantity);
    }
    let mut products: Vec<i64> = order.items.iter().map(|i| i.product_id).collect();
    products.sort_unstable();
    products.dedup();
    let documented = (1..=MAX_LINES).contains(&order.items.len())
        && order
            .items
            .iter()
            .all(|i| (1..=MAX_QUANTITY).contains(&i.quantity))
        && products.len() == order.items.len();
    match ValidatedOrder::new(request, &OrderLimits::default()) {
        Ok(valid) => {
            assert!(
                documented,
                "accepted beyond the documented limits: {order:?}"
            );
            assert_eq!(valid.lines().len(), order.items.len());
        }
        Err(error) => {
            assert!(
                !documented,
                "refused within the documented limits: {order:?}: {error}"
            );
            assert!(
                matches!(
                    error,
                    commerce_core::Error::EmptyOrder
                        | commerce_core::Error::TooManyLines { .. }
                        | commerce_core::Error::InvalidQuantity { .. }
                        | commerce_core::Error::DuplicateLine { .. }
                ),
                "an order's lines refused with an unexpected error: {error:?}"
            );
        }
    }
}

/// The other JSON bodies, chosen by the first byte: product creation, rename, stock receipt,
/// and the order again (so one corpus mixes every shape).
///
/// # Panics
/// When the property does not hold.
pub fn check_json_body(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            check_decoding::<CreateProduct>(body);
        }
        1 => {
            check_decoding::<RenameProduct>(body);
        }
        2 => {
            check_decoding::<Inbound>(body);
        }
        _ => check_place_order(body),
    }
}
