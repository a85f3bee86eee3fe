//! JSON text for the few places libp2p protocols carry it (ICE candidates in signalling,
//! Shoal's membership messages).
//!
//! In the browser it goes through the page's own `JSON.parse`/`JSON.stringify` and
//! `serde-wasm-bindgen` (which the bindings link anyway) instead of `serde_json`, whose
//! parser and formatter would add ~40 KB to the wasm. Natively (tests, tools) it is
//! `serde_json`. The serde derives, and so the accepted shapes, are the same on both.

use serde::{Serialize, de::DeserializeOwned};

/// Parses `text` as JSON into a `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    imp::from_str(text)
}

/// The JSON text of `value`.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, String> {
    imp::to_string(value)
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::*;

    pub(super) fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    pub(super) fn to_string<T: Serialize>(value: &T) -> Result<String, String> {
        serde_json::to_string(value).map_err(|e| e.to_string())
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::*;

    fn js_message(error: wasm_bindgen::JsValue) -> String {
        js_sys::Error::from(error).message().into()
    }

    pub(super) fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
        let value = js_sys::JSON::parse(text).map_err(js_message)?;
        serde_wasm_bindgen::from_value(value).map_err(|e| js_message(e.into()))
    }

    pub(super) fn to_string<T: Serialize>(value: &T) -> Result<String, String> {
        let value =
            value.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| js_message(e.into()))?;
        let text = js_sys::JSON::stringify(&value).map_err(js_message)?;
        Ok(text.into())
    }
}
