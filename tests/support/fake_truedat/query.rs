//! Query-string parameters of the test routes (`?ms=`, `?bytes=`, `?to=`), decoded the
//! way Plug decodes them (`+` is a space, `%XX` a byte), without an extra dependency.

/// The first value of parameter `name`, decoded; `None` if absent or not UTF-8.
pub(super) fn param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key)? == name).then(|| decode(value))?
    })
}

/// Form-style percent-decoding; a `%` not followed by two hex digits stays as is.
fn decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(byte) = escaped_byte(&bytes[i..]) {
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// The byte of a `%XX` escape at the start of `input`.
fn escaped_byte(input: &[u8]) -> Option<u8> {
    let [b'%', high, low, ..] = *input else {
        return None;
    };
    Some((hex_digit(high)? << 4) | hex_digit(low)?)
}

fn hex_digit(digit: u8) -> Option<u8> {
    let value = char::from(digit).to_digit(16)?;
    u8::try_from(value).ok()
}
