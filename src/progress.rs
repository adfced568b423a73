//! Progress bars and periodic log lines.
