//! Reading reply XML in the tests with quick-xml's reader directly, not with the project's
//! message parser, so a parser bug cannot hide a rendering bug. Text is kept as written
//! (CDATA sections joined, entity references left as they are); malformed XML panics.

use quick_xml::events::Event;
use quick_xml::reader::Reader;

/// Every element of `xml` in document order: (name, the text directly in it).
pub fn xml_leaves(xml: &str) -> Vec<(String, String)> {
    let mut reader = Reader::from_str(xml);
    let mut out: Vec<(String, String)> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    loop {
        let event = reader
            .read_event()
            .unwrap_or_else(|e| panic!("malformed XML ({e}): {xml}"));
        let text: &str = match &event {
            Event::Start(e) | Event::Empty(e) => {
                let name = e.name().0.to_string();
                out.push((name, String::new()));
                if matches!(event, Event::Start(_)) {
                    open.push(out.len() - 1);
                }
                continue;
            }
            Event::End(_) => {
                open.pop().expect("end tag without a start");
                continue;
            }
            Event::Text(t) => &t[..],
            Event::CData(t) => &t[..],
            Event::GeneralRef(r) => {
                let name = &r[..];
                match open.last() {
                    Some(&i) => out[i].1.push_str(&format!("&{name};")),
                    None => panic!("entity reference outside the root: {xml}"),
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        match open.last() {
            Some(&i) => out[i].1.push_str(text),
            None => assert!(text.trim().is_empty(), "text outside the root: {xml}"),
        }
    }
    assert!(open.is_empty(), "unclosed elements in {xml}");
    out
}

/// Names of the elements of `xml` in document order.
pub fn xml_elements(xml: &str) -> Vec<String> {
    xml_leaves(xml).into_iter().map(|(name, _)| name).collect()
}

/// Text of every `<name>` element of `xml`, in document order.
pub fn xml_fields(xml: &str, name: &str) -> Vec<String> {
    (xml_leaves(xml).into_iter())
        .filter(|(n, _)| n == name)
        .map(|(_, text)| text)
        .collect()
}

/// Text of the first `<name>` element of `xml`.
pub fn xml_field(xml: &str, name: &str) -> Option<String> {
    xml_fields(xml, name).into_iter().next()
}
