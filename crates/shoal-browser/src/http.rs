//! HTTP for segments and records, through the page's `fetch`.

use bytes::Bytes;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, Headers, Request, RequestInit, Response};

use crate::js_text;

/// An HTTP fetch that can be aborted.
pub(crate) struct Fetch {
    controller: Option<AbortController>,
}

impl Fetch {
    pub(crate) fn new() -> Self {
        Self { controller: AbortController::new().ok() }
    }

    pub(crate) fn abort(&self) {
        if let Some(c) = &self.controller {
            c.abort();
        }
    }

    /// GETs `url`, or bytes `[start, end)` of it, into memory.
    pub(crate) async fn get(&self, url: &str, range: Option<(u64, u64)>) -> Result<Bytes, String> {
        let init = RequestInit::new();
        init.set_method("GET");
        if let Some(c) = &self.controller {
            init.set_signal(Some(&c.signal()));
        }
        if let Some((start, end)) = range {
            let headers = Headers::new().map_err(js_text)?;
            headers.set("Range", &format!("bytes={start}-{}", end.saturating_sub(1))).map_err(js_text)?;
            init.set_headers(&headers);
        }
        let request = Request::new_with_str_and_init(url, &init).map_err(js_text)?;
        let window = web_sys::window().ok_or("no window")?;
        let promise = window.fetch_with_request(&request);
        let response: Response = JsFuture::from(promise).await.map_err(js_text)?.dyn_into().map_err(js_text)?;
        let status = response.status();
        if !response.ok() {
            return Err(format!("HTTP {status} for {url}"));
        }
        let buffer = JsFuture::from(response.array_buffer().map_err(js_text)?).await.map_err(js_text)?;
        let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
        // A server that ignores Range sends the whole body with 200.
        if let Some((start, end)) = range
            && status == 200
            && bytes.len() as u64 >= end
        {
            return Ok(Bytes::from(bytes).slice(start as usize..end as usize));
        }
        Ok(Bytes::from(bytes))
    }
}

/// The record of a segment lives next to it: the URL with `suffix`, before any query.
pub(crate) fn record_url(segment_url: &str, suffix: &str) -> String {
    match segment_url.find('?') {
        Some(q) => format!("{}{}{}", &segment_url[..q], suffix, &segment_url[q..]),
        None => format!("{segment_url}{suffix}"),
    }
}
