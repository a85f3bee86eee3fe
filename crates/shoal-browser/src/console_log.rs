//! Routes `tracing` events at or above a level to the browser console. Spans are not
//! tracked: a viewer's console needs the message, not the call tree (and
//! `tracing-subscriber` would cost the bundle tens of KB).

use std::fmt::Write;

use tracing::{
    Event, Level, Metadata, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};

struct Console {
    max: Level,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for Console {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut fields = Fields(format!("[shoal {}] {}: ", metadata.level(), metadata.target()));
        event.record(&mut fields);
        let line = wasm_bindgen::JsValue::from_str(&fields.0);
        match *metadata.level() {
            Level::ERROR => web_sys::console::error_1(&line),
            Level::WARN => web_sys::console::warn_1(&line),
            Level::INFO => web_sys::console::info_1(&line),
            _ => web_sys::console::debug_1(&line),
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Installs the console subscriber (once per page; later calls keep the first).
pub(crate) fn init(level: Option<&str>) {
    let max = match level.unwrap_or("warn") {
        "error" => Level::ERROR,
        "info" => Level::INFO,
        "debug" => Level::DEBUG,
        "trace" => Level::TRACE,
        _ => Level::WARN,
    };
    let _ = tracing::subscriber::set_global_default(Console { max });
}
