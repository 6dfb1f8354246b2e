//! Request bodies read the way the server reads them: [`decode`].

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};

/// Why [`decode`] refused a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not well-formed JSON (the server answers 400 `invalid_json`).
    #[error("the body is not valid JSON: {0}")]
    Syntax(String),
    /// Well-formed JSON of the wrong shape or types for the request (the server answers 422
    /// `validation_failed`).
    #[error("{path}: {reason}")]
    Shape {
        /// Where in the body, as `items[0].quantity` (`.` for the body itself).
        path: String,
        /// What is wrong there.
        reason: String,
    },
}

/// Decodes `body` as a `T` the way the server reads every JSON request body: serde's derived
/// `Deserialize` as the types declare it, with two differences from `serde_json::from_slice`:
///
/// - **A struct is read only from a JSON object.** Derived `Deserialize` also takes a struct
///   from an array of its fields' values in declared order (`["renamed"]` as a rename,
///   `{"items": [[1, 2]]}` as an order of two units of product 1); the API documents objects
///   only, so an array where an object belongs is refused like any other wrong type.
/// - **Well-formed JSON of the wrong shape is always a shape error.** serde_json reports some
///   type mismatches as syntax errors (a number where an enum's string belongs is
///   `expected value`); [`DecodeError::Syntax`] is kept for bytes that are not JSON at all.
///
/// A client never needs this to talk to the server; it can use it to check a body it builds
/// by hand before sending it.
///
/// ```
/// use commerce_client::{decode, DecodeError, PlaceOrder};
///
/// let order: PlaceOrder = decode(br#"{"items": [{"product_id": 1, "quantity": 2}]}"#).unwrap();
/// assert_eq!(order, PlaceOrder::one(1, 2));
///
/// // An order line written as an array is refused as a shape error, with where it is.
/// let Err(DecodeError::Shape { path, .. }) = decode::<PlaceOrder>(br#"{"items": [[1, 2]]}"#)
/// else { panic!("accepted") };
/// assert_eq!(path, "items[0]");
///
/// // Only bytes that are not JSON are a syntax error.
/// assert!(matches!(decode::<PlaceOrder>(b"{\"items\": "), Err(DecodeError::Syntax(_))));
/// ```
///
/// # Errors
/// [`DecodeError::Syntax`] for bytes that are not one well-formed JSON value,
/// [`DecodeError::Shape`] for JSON that is not a `T` (an array where an object belongs
/// included).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(Strict(&mut json))
        .map_err(|e| refusal(body, e.path().to_string(), e.inner()))?;
    json.end().map_err(|e| refusal(body, ".".into(), &e))?;
    Ok(value)
}

/// Sorts serde_json's error: a shape error whenever the body is well-formed JSON, else the
/// first syntax error in it.
fn refusal(body: &[u8], path: String, error: &serde_json::Error) -> DecodeError {
    // `Value`, not `IgnoredAny`: skipping a string does not check that it is UTF-8.
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(_) => DecodeError::Shape {
            path,
            reason: error.to_string(),
        },
        Err(syntax) => DecodeError::Syntax(syntax.to_string()),
    }
}

/// Wraps a deserializer, a visitor, a seed or an access so that every struct below it is read
/// only from a map (see [`decode`]); everything else passes through unchanged.
struct Strict<T>(T);

/// A visitor below [`Strict`]: `map_only` when it builds a struct.
struct Visiting<V> {
    visitor: V,
    map_only: bool,
}

impl<V> Visiting<V> {
    fn any(visitor: V) -> Self {
        Self {
            visitor,
            map_only: false,
        }
    }

    fn map_only(visitor: V) -> Self {
        Self {
            visitor,
            map_only: true,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(Visiting::any(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, Visiting::any(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_newtype_struct(name, Visiting::any(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, Visiting::any(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_tuple_struct(name, len, Visiting::any(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_struct(name, fields, Visiting::map_only(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_enum(name, variants, Visiting::any(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visiting<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_i128(i128) visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64)
        visit_u128(u128) visit_f32(f32) visit_f64(f64) visit_char(char) visit_str(&str)
        visit_borrowed_str(&'de str) visit_string(String) visit_bytes(&[u8])
        visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_some(Strict(deserializer))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.visitor.visit_newtype_struct(Strict(deserializer))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        if self.map_only {
            return Err(de::Error::invalid_type(Unexpected::Seq, &self));
        }
        self.visitor.visit_seq(Strict(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(Strict(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(Strict(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Strict<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Strict(deserializer))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Strict<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Strict(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Strict<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Strict(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Strict(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Strict<A> {
    type Error = A::Error;
    type Variant = Strict<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(Strict(seed))?;
        Ok((value, Strict(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Strict<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Strict(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Visiting::any(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, Visiting::map_only(visitor))
    }
}

#[cfg(test)]
mod tests {
    use super::{decode, DecodeError};
    use crate::{CreateProduct, Inbound, PlaceOrder, RenameProduct, Shortage};

    fn shape<T: serde::de::DeserializeOwned + std::fmt::Debug>(body: &str) -> String {
        match decode::<T>(body.as_bytes()) {
            Err(DecodeError::Shape { path, .. }) => path,
            other => panic!("{body}: {other:?}, expected a shape error"),
        }
    }

    #[test]
    fn objects_decode_as_serde_derives_them() {
        let order: PlaceOrder = decode(
            br#"{"items": [{"product_id": 3, "quantity": 2.0}], "on_shortage": "backorder"}"#,
        )
        .unwrap();
        assert_eq!(
            order,
            PlaceOrder::one(3, 2).on_shortage(Shortage::Backorder)
        );
        let rename: RenameProduct = decode(br#"{"name": "kettle"}"#).unwrap();
        assert_eq!(rename.name, "kettle");
    }

    #[test]
    fn a_struct_written_as_an_array_is_a_shape_error_where_it_is() {
        assert_eq!(shape::<RenameProduct>(r#"["renamed"]"#), ".");
        assert_eq!(shape::<RenameProduct>(r#"["renamed", "again"]"#), ".");
        assert_eq!(
            shape::<CreateProduct>(r#"["ARR-1", "kettle", 100, 5]"#),
            "."
        );
        assert_eq!(shape::<Inbound>("[5]"), ".");
        assert_eq!(shape::<PlaceOrder>(r#"{"items": [[1, 2]]}"#), "items[0]");
        assert_eq!(
            shape::<PlaceOrder>(r#"{"items": [{"product_id": 1, "quantity": 1}, [1, 2, 3]]}"#),
            "items[1]"
        );
    }

    #[test]
    fn well_formed_json_of_the_wrong_type_is_a_shape_error_not_a_syntax_error() {
        for wrong in ["7", "true", "[]", "{}", "null", "\"later\""] {
            let body = format!(
                r#"{{"items": [{{"product_id": 1, "quantity": 1}}], "on_shortage": {wrong}}}"#
            );
            assert_eq!(shape::<PlaceOrder>(&body), "on_shortage", "{body}");
        }
        assert_eq!(
            shape::<PlaceOrder>(r#"{"items": [{"product_id": 1, "quantity": "1"}]}"#),
            "items[0].quantity"
        );
        assert_eq!(shape::<PlaceOrder>(r#"{"items": [], "extra": 1}"#), "extra");
    }

    #[test]
    fn only_bytes_that_are_not_json_are_a_syntax_error() {
        for bad in ["", "{", r#"{"items": [}"#, "{} {}", "{\"a\": 1,}", "nul"] {
            assert!(
                matches!(
                    decode::<PlaceOrder>(bad.as_bytes()),
                    Err(DecodeError::Syntax(_))
                ),
                "{bad:?}"
            );
        }
        // Not UTF-8 inside a key that is an unknown field anyway (found by the fuzz target).
        let not_utf8 = b"{\"quantity\":1,\"\x8d\x90te\":null}";
        assert!(
            matches!(decode::<Inbound>(not_utf8), Err(DecodeError::Syntax(_))),
            "{:?}",
            decode::<Inbound>(not_utf8)
        );
    }
}
