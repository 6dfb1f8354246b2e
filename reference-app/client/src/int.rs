//! Integers as JSON Schema counts them: `2` and `2.0` are the same integer (a number with a
//! zero fraction), so the server accepts both where its document says `integer`.

use serde::de::{self, Deserializer, Unexpected, Visitor};

/// Deserializes an `i64` from a JSON integer, or from a number with a zero fraction within
/// range.
pub(crate) fn i64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    deserializer.deserialize_i64(Integer)
}

struct Integer;

/// 2^63, the first float above `i64::MAX`.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

impl Visitor<'_> for Integer {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer (i64)")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    #[allow(clippy::cast_possible_truncation)] // checked: integral and within range
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&v) {
            Ok(v as i64)
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct N(#[serde(deserialize_with = "super::i64")] i64);

    #[test]
    fn integral_numbers_are_integers_and_others_are_refused() {
        let n = |json: &str| serde_json::from_str::<N>(json).map(|n| n.0).ok();
        assert_eq!(n("7"), Some(7));
        assert_eq!(n("-7"), Some(-7));
        assert_eq!(n("188.0"), Some(188));
        assert_eq!(n("1e3"), Some(1000));
        assert_eq!(n("2251799813685247.0"), Some(2_251_799_813_685_247));
        assert_eq!(n("9223372036854775807"), Some(i64::MAX));
        assert_eq!(n("-9223372036854775808"), Some(i64::MIN));
        for bad in [
            "1.5",
            "9223372036854775808",
            "9.3e18",
            "\"7\"",
            "null",
            "true",
        ] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }
}
