//! `params_hash`: SHA-256 over the RFC 8785 (JSON Canonicalization Scheme) encoding of a
//! request's parameters, so that the request a guardian approved is provably the request that
//! gets executed, however its JSON was spelled (key order, whitespace, number formatting).

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Why parameters cannot be hashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("params must be a JSON object")]
    NotAnObject,
    #[error("params cannot be canonicalized: {0}")]
    Unrepresentable(String),
}

/// The RFC 8785 canonical bytes of `value`.
///
/// # Errors
/// A number JSON cannot represent as an IEEE 754 double in canonical form.
pub fn canonical_bytes(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    serde_json_canonicalizer::to_vec(value)
        .map_err(|e| CanonicalError::Unrepresentable(e.to_string()))
}

/// `params_hash` of a request's parameters: lowercase hex SHA-256 of their canonical bytes.
///
/// # Errors
/// `params` is not a JSON object, or cannot be canonicalized.
pub fn params_hash(params: &Value) -> Result<String, CanonicalError> {
    if !params.is_object() {
        return Err(CanonicalError::NotAnObject);
    }
    Ok(hex::encode(Sha256::digest(canonical_bytes(params)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(json: &str) -> String {
        let value: Value = serde_json::from_str(json).expect("test JSON");
        String::from_utf8(canonical_bytes(&value).expect("canonical")).expect("utf-8")
    }

    /// RFC 8785 section 3.2.2 ("Sorting of Object Properties"): keys sort by their UTF-16 code
    /// units, not by UTF-8 bytes or code points.
    #[test]
    fn rfc8785_sorts_properties_by_utf16_code_units() {
        let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
        let text = canon(input);
        let positions: Vec<usize> = [
            "Carriage Return",
            "One",
            "Control",
            "Latin Small Letter O With Diaeresis",
            "Euro Sign",
            "Emoji: Grinning Face",
            "Hebrew Letter Dalet With Dagesh",
        ]
        .iter()
        .map(|name| text.find(name).expect("every value is present"))
        .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    /// RFC 8785 section 3.2.2.3 and appendix B: numbers are serialized as ECMAScript does.
    #[test]
    fn rfc8785_number_serialization() {
        assert_eq!(
            canon(
                r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001]}"#
            ),
            r#"{"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27]}"#
        );
        assert_eq!(canon("[-0.0, 1.0, 100, 1e21]"), "[0,1,100,1e+21]");
    }

    /// RFC 8785 section 3.2.2.2: strings escape only what JSON requires, in the shortest form.
    #[test]
    fn rfc8785_string_serialization() {
        assert_eq!(
            canon(r#"{"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/"}"#),
            "{\"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
        );
        assert_eq!(
            canon(r#"{"literals":[null, true, false]}"#),
            r#"{"literals":[null,true,false]}"#
        );
    }

    #[test]
    fn the_same_params_spelled_differently_hash_the_same() {
        let a: Value =
            serde_json::from_str(r#"{"amount": 60000, "currency":"CNY", "recipient":"toy-shop"}"#)
                .expect("json");
        let b: Value = serde_json::from_str(
            r#"{ "recipient" : "toy-shop", "currency":"CNY","amount":6.0e4 }"#,
        )
        .expect("json");
        let c: Value =
            serde_json::from_str(r#"{"amount": 60001, "currency":"CNY", "recipient":"toy-shop"}"#)
                .expect("json");
        assert_eq!(params_hash(&a), params_hash(&b));
        assert_ne!(params_hash(&a), params_hash(&c));
        assert_eq!(params_hash(&a).map(|h| h.len()), Ok(64));
    }

    #[test]
    fn params_must_be_an_object() {
        assert_eq!(
            params_hash(&Value::from(5)),
            Err(CanonicalError::NotAnObject)
        );
        assert_eq!(params_hash(&Value::Null), Err(CanonicalError::NotAnObject));
    }
}
