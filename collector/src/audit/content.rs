//! Text extraction shared by the protocols: message content that is a string or an array of parts,
//! and the common carriers of retrieved documents.

use serde_json::Value;

use super::{Attachment, AuditView, ChoiceView, ContextItem, ContextSource};

/// Part types whose `text` is plain text in any of the three protocols.
const TEXT_PARTS: &[&str] = &["text", "input_text", "output_text"];

/// The text of a message `content`: a string, or the text parts of an array joined with `\n`.
/// `None` when there is no text at all.
pub fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| match p {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(o) => {
                        let kind = o.get("type").and_then(Value::as_str).unwrap_or("text");
                        if TEXT_PARTS.contains(&kind) {
                            o.get("text").and_then(Value::as_str)
                        } else {
                            None
                        }
                    }
                    _ => None,
                })
                .collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

/// A short string field of an object, if present.
pub fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// A token count field.
pub fn count(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// The human part of an API error object (`{"message": ...}`) or the value itself.
pub fn error_message(err: &Value) -> String {
    err.get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| err.as_str().map(str::to_owned))
        .unwrap_or_else(|| err.to_string())
}

/// One retrieved document: a string, or an object holding its text under a usual key.
fn document(v: &Value, field: String) -> Option<ContextItem> {
    let (text, name) = match v {
        Value::String(s) => (s.clone(), None),
        Value::Object(o) => {
            let text = ["text", "content", "snippet", "page_content", "chunk"]
                .iter()
                .find_map(|k| o.get(*k).and_then(text_of))
                .or_else(|| o.get("data").and_then(|d| d.get("text")).and_then(text_of))?;
            let name = ["title", "id", "source", "url", "name"]
                .iter()
                .find_map(|k| match o.get(*k) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                });
            (text, name)
        }
        _ => return None,
    };
    Some(ContextItem {
        source: ContextSource::Document,
        text,
        name,
        field,
    })
}

/// Retrieved documents a request carries beside its messages: a top-level `documents` array, or a
/// `context` field (a string, an array of documents, or an object with `documents`).
pub fn documents(request: &Value) -> Vec<ContextItem> {
    let mut out = Vec::new();
    for key in ["documents", "context"] {
        let Some(v) = request.get(key) else { continue };
        match v {
            Value::Array(items) => out.extend(
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| document(d, format!("{key}[{i}]"))),
            ),
            Value::Object(o) if o.get("documents").is_some_and(Value::is_array) => {
                if let Some(Value::Array(items)) = o.get("documents") {
                    out.extend(
                        items
                            .iter()
                            .enumerate()
                            .filter_map(|(i, d)| document(d, format!("{key}.documents[{i}]"))),
                    );
                }
            }
            other => out.extend(document(other, key.to_owned())),
        }
    }
    out
}

/// Puts the choices into the view: the first as the answer, all of them when there are several.
pub fn set_choices(view: &mut AuditView, mut choices: Vec<ChoiceView>) {
    choices.sort_by_key(|c| c.index);
    if let Some(first) = choices.first() {
        view.answer = first.answer.clone();
        view.tool_calls = first.tool_calls.clone();
        view.finish_reason = first.finish_reason.clone();
    }
    if choices.len() > 1 {
        view.choices = choices;
    }
}

/// Appends `piece` to an optional text, starting it if need be.
pub fn append(slot: &mut Option<String>, piece: &str) {
    slot.get_or_insert_with(String::new).push_str(piece);
}

/// The size in bytes of what a base64 text (standard or URL-safe, padded or not) decodes to.
pub fn base64_size(data: &str) -> u64 {
    let digits = data
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
        .count() as u64;
    digits * 3 / 4
}

/// An attachment note for an inline base64 payload, or a `data:` URL.
pub fn attachment(
    kind: &'static str,
    field: String,
    mime_type: Option<String>,
    data: Option<&str>,
) -> Attachment {
    let (mime_type, data) = match data.and_then(|d| d.strip_prefix("data:")) {
        Some(rest) => match rest.split_once(',') {
            Some((meta, payload)) => (
                mime_type.or_else(|| {
                    meta.split(';')
                        .next()
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                }),
                Some(payload),
            ),
            None => (mime_type, None),
        },
        None => (mime_type, data),
    };
    Attachment {
        kind,
        field,
        mime_type,
        size_bytes: data.map(base64_size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_may_be_a_string_or_parts() {
        assert_eq!(text_of(&json!("hi")).as_deref(), Some("hi"));
        assert_eq!(
            text_of(&json!([{"type":"text","text":"a"},{"type":"image_url","image_url":{}},{"type":"input_text","text":"b"}])).as_deref(),
            Some("a\nb")
        );
        assert_eq!(text_of(&json!([{"type":"image"}])), None);
        assert_eq!(text_of(&Value::Null), None);
    }

    #[test]
    fn attachments_know_their_size_and_the_type_of_a_data_url() {
        let a = attachment("image", "images[0]".into(), None, Some("aGVsbG8="));
        assert_eq!((a.size_bytes, a.mime_type), (Some(5), None));
        let a = attachment(
            "image",
            "x".into(),
            None,
            Some("data:image/png;base64,aGVsbG8h"),
        );
        assert_eq!(
            (a.size_bytes, a.mime_type.as_deref()),
            (Some(6), Some("image/png"))
        );
        let a = attachment("image", "x".into(), Some("image/jpeg".into()), None);
        assert_eq!(
            (a.size_bytes, a.mime_type.as_deref()),
            (None, Some("image/jpeg"))
        );
    }

    #[test]
    fn documents_and_context_fields_are_collected() {
        let req = json!({
            "documents": ["plain", {"title": "Doc B", "text": "bee"}, {"id": 3, "snippet": "three"}, {"data": {"text": "cohere"}}],
            "context": {"documents": [{"page_content": "lc"}]}
        });
        let docs = documents(&req);
        let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, ["plain", "bee", "three", "cohere", "lc"]);
        assert_eq!(docs[1].name.as_deref(), Some("Doc B"));
        assert_eq!(docs[2].name.as_deref(), Some("3"));
        assert_eq!(docs[1].field, "documents[1]");
        assert_eq!(docs[4].field, "context.documents[0]");
        let ctx = documents(&json!({"context": "ctx"}));
        assert_eq!(
            (ctx[0].text.as_str(), ctx[0].field.as_str()),
            ("ctx", "context")
        );
    }
}
