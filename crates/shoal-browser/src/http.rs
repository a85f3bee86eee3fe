//! HTTP for segments and records, through the page's `fetch`.

use bytes::Bytes;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortSignal, Headers, Request, RequestInit, Response};

use crate::js_text;

/// GETs `url`, or bytes `[start, end)` of it, into memory (one copy, out of the
/// response's `ArrayBuffer`). `signal` aborts it.
pub(crate) async fn get(url: &str, range: Option<(u64, u64)>, signal: &AbortSignal) -> Result<Bytes, String> {
    let init = RequestInit::new();
    init.set_method("GET");
    init.set_signal(Some(signal));
    if let Some((start, end)) = range {
        let headers = Headers::new().map_err(js_text)?;
        headers.set("Range", &format!("bytes={start}-{}", end.saturating_sub(1))).map_err(js_text)?;
        init.set_headers(&headers);
    }
    let request = Request::new_with_str_and_init(url, &init).map_err(js_text)?;
    let window = web_sys::window().ok_or("no window")?;
    let response: Response =
        JsFuture::from(window.fetch_with_request(&request)).await.map_err(js_text)?.dyn_into().map_err(js_text)?;
    let status = response.status();
    if !response.ok() {
        return Err(format!("HTTP {status} for {url}"));
    }
    let buffer = JsFuture::from(response.array_buffer().map_err(js_text)?).await.map_err(js_text)?;
    let bytes = Bytes::from(js_sys::Uint8Array::new(&buffer).to_vec());
    // A server that ignores Range sends the whole body with 200.
    if let Some((start, end)) = range
        && status == 200
        && bytes.len() as u64 >= end
    {
        return Ok(bytes.slice(start as usize..end as usize));
    }
    Ok(bytes)
}
