//! The libpq URI parser (`--synapse-database-uri`, `--mas-database-uri`, MAS `database.uri`)
//! on arbitrary text: it may refuse, never panic, and never quote the URI in its error (a
//! malformed URI can put a password anywhere).

#![no_main]

use libfuzzer_sys::fuzz_target;
use syn2mas::db::ConnectOptions;

/// Stands for a secret; every `#` of the input becomes one, so the fuzzer places secrets in
/// every part of the URI (a `#` has no meaning to the parser).
const MARKER: &str = "ZQXJ";

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let uri = raw.replace('#', MARKER);
    match ConnectOptions::from_uri(&uri) {
        Ok(options) => {
            let _ = format!("{options:?}");
            let _ = options.describe_with(|_| None);
        }
        Err(message) => {
            assert!(
                !message.contains(MARKER),
                "the error quotes the URI: {message}"
            );
        }
    }
});
