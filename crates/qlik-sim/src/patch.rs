//! JSON Patch parsing and application, with Qlik's body-format rules (fact sheet §2.3).
//!
//! The accepted body is exactly `@qlik/api`'s `PatchRequest` (data-connections.d.ts and
//! data-credentials.d.ts, 2.19.0): `{op: "add" | "replace" | "remove"; path: string;
//! value?: string | boolean | number | unknown[]}[]`, with `value` "required only for add or
//! replace". Everything else is a 400: the RFC 6902 ops Qlik's type leaves out (`test`, `move`,
//! `copy`), object and null values, and add/replace without `value`. Application follows RFC
//! 6902 for the three ops.

use serde_json::Value;

/// A JSON Patch operation kind: `PatchRequest.op` of `@qlik/api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `add`: insert into an array or set an object member.
    Add,
    /// `replace`: overwrite an existing value.
    Replace,
    /// `remove`: delete an existing value.
    Remove,
}

/// One parsed JSON Patch operation.
#[derive(Debug, Clone)]
pub struct PatchOp {
    /// The operation.
    pub op: OpKind,
    /// The raw JSON Pointer.
    pub path: String,
    /// The unescaped reference tokens of `path`.
    pub tokens: Vec<String>,
    /// The `value` member (required for add and replace).
    pub value: Option<Value>,
}

impl PatchOp {
    /// The first reference token (the top-level field).
    pub fn top(&self) -> &str {
        self.tokens.first().map(String::as_str).unwrap_or("")
    }

    /// The second reference token, if any.
    pub fn second(&self) -> Option<&str> {
        self.tokens.get(1).map(String::as_str)
    }
}

/// Parses a request body as a bare JSON Patch array. Errors are human-readable 400 details.
pub fn parse_patch_body(body: &[u8]) -> Result<Vec<PatchOp>, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("Request body is not valid JSON: {e}"))?;
    let items = match doc {
        Value::Array(items) => items,
        Value::Object(ref o) if o.contains_key("patchData") => {
            return Err(
                "The {\"patchData\": [...]} payload format is no longer supported; \
                        send a bare JSON Patch array"
                    .to_owned(),
            );
        }
        _ => {
            return Err(
                "Request body must be a JSON Patch array of {op, path, value} objects".to_owned(),
            );
        }
    };
    let mut ops = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut o) = item else {
            return Err(format!("Patch operation {i} must be an object"));
        };
        let op = match o.get("op").and_then(Value::as_str) {
            Some("add") => OpKind::Add,
            Some("replace") => OpKind::Replace,
            Some("remove") => OpKind::Remove,
            Some(other) => {
                return Err(format!(
                    "Patch operation {i}: unsupported op \"{}\" (allowed: add, replace, remove)",
                    other.escape_debug()
                ));
            }
            None => return Err(format!("Patch operation {i}: op is required (a string)")),
        };
        let Some(path) = o.get("path").and_then(Value::as_str).map(str::to_owned) else {
            return Err(format!("Patch operation {i}: path is required"));
        };
        let tokens = parse_pointer(&path).map_err(|e| format!("Patch operation {i}: {e}"))?;
        let value = o.remove("value");
        if let Some(v @ (Value::Object(_) | Value::Null)) = &value {
            return Err(format!(
                "Patch operation {i} ({path}): value must be a string, boolean, number or \
                 array, not {}",
                json_type(v)
            ));
        }
        if op != OpKind::Remove && value.is_none() {
            return Err(if o.contains_key("Value") {
                format!(
                    "Patch operation {i} ({path}): value is required (found \"Value\"; \
                     member names are case-sensitive)"
                )
            } else {
                format!("Patch operation {i} ({path}): value is required")
            });
        }
        ops.push(PatchOp {
            op,
            path,
            tokens,
            value,
        });
    }
    Ok(ops)
}

/// Splits a JSON Pointer into unescaped tokens. The root pointer `""` is rejected.
pub fn parse_pointer(path: &str) -> Result<Vec<String>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("invalid JSON Pointer \"{path}\""));
    };
    rest.split('/')
        .map(|raw| {
            let mut out = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(format!("invalid escape in JSON Pointer \"{path}\"")),
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .collect()
}

/// The JSON type name of a value, as used in error details and api-specs.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check_same_type(path: &str, old: &Value, new: &Value) -> Result<(), String> {
    if old.is_null() || json_type(old) == json_type(new) {
        Ok(())
    } else {
        Err(format!(
            "Type mismatch at {path}: the existing value is {}, the patch value is {}",
            json_type(old),
            json_type(new)
        ))
    }
}

fn parse_index(tok: &str, len: usize, allow_end: bool) -> Option<usize> {
    if tok.is_empty() || (tok.len() > 1 && tok.starts_with('0')) {
        return None;
    }
    if !tok.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let i: usize = tok.parse().ok()?;
    if i < len || (allow_end && i == len) {
        Some(i)
    } else {
        None
    }
}

/// Applies one operation to `doc` with RFC 6902 semantics, plus a JSON type check: `add` onto an
/// existing object member and `replace` must keep the JSON type of the existing value.
pub fn apply(doc: &mut Value, op: &PatchOp) -> Result<(), String> {
    let path = op.path.as_str();
    let missing = || format!("Path {path} does not exist");
    match op.op {
        OpKind::Replace => {
            let new = op.value.clone().expect("checked at parse time");
            let target = doc.pointer_mut(path).ok_or_else(missing)?;
            check_same_type(path, target, &new)?;
            *target = new;
            Ok(())
        }
        OpKind::Remove => {
            let (parent_path, _) = path.rsplit_once('/').expect("pointer starts with /");
            let last = op.tokens.last().expect("at least one token");
            match doc.pointer_mut(parent_path).ok_or_else(missing)? {
                Value::Object(m) => m.remove(last).map(|_| ()).ok_or_else(missing),
                Value::Array(a) => {
                    let i = parse_index(last, a.len(), false).ok_or_else(missing)?;
                    a.remove(i);
                    Ok(())
                }
                _ => Err(missing()),
            }
        }
        OpKind::Add => {
            let new = op.value.clone().expect("checked at parse time");
            let (parent_path, _) = path.rsplit_once('/').expect("pointer starts with /");
            let last = op.tokens.last().expect("at least one token");
            let parent = doc
                .pointer_mut(parent_path)
                .ok_or_else(|| format!("Parent of {path} does not exist"))?;
            match parent {
                Value::Object(m) => {
                    if let Some(old) = m.get(last) {
                        check_same_type(path, old, &new)?;
                    }
                    m.insert(last.clone(), new);
                    Ok(())
                }
                Value::Array(a) => {
                    let i = if last == "-" {
                        a.len()
                    } else {
                        parse_index(last, a.len(), true)
                            .ok_or_else(|| format!("Array index out of range at {path}"))?
                    };
                    a.insert(i, new);
                    Ok(())
                }
                _ => Err(format!("Parent of {path} is not a container")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(doc: &mut Value, body: Value) -> Result<(), String> {
        let ops = parse_patch_body(body.to_string().as_bytes())?;
        for op in &ops {
            apply(doc, op)?;
        }
        Ok(())
    }

    #[test]
    fn body_format_rules() {
        assert!(
            parse_patch_body(br#"{"patchData":[]}"#)
                .unwrap_err()
                .contains("patchData")
        );
        assert!(
            parse_patch_body(br#"{"op":"add"}"#)
                .unwrap_err()
                .contains("array")
        );
        assert!(parse_patch_body(b"nope").unwrap_err().contains("JSON"));
        let e = parse_patch_body(br#"[{"op":"replace","path":"/a","Value":"x"}]"#).unwrap_err();
        assert!(e.contains("value is required"), "{e}");
        assert!(parse_patch_body(br#"[{"op":"move","path":"/a","from":"/b"}]"#).is_err());
        assert!(parse_patch_body(br#"[{"op":"remove","path":"a"}]"#).is_err());
        let ops = parse_patch_body(br#"[{"op":"remove","path":"/a~1b/c~0d"}]"#).unwrap();
        assert_eq!(ops[0].tokens, vec!["a/b", "c~d"]);
    }

    #[test]
    fn rfc6902_semantics() {
        let mut doc = json!({"a": {"b": 1}, "arr": [1, 2]});
        run(&mut doc, json!([{"op":"add","path":"/arr/1","value":9}])).unwrap();
        assert_eq!(doc["arr"], json!([1, 9, 2]));
        run(&mut doc, json!([{"op":"add","path":"/arr/-","value":3}])).unwrap();
        assert_eq!(doc["arr"], json!([1, 9, 2, 3]));
        run(&mut doc, json!([{"op":"remove","path":"/arr/0"}])).unwrap();
        assert_eq!(doc["arr"], json!([9, 2, 3]));
        run(&mut doc, json!([{"op":"add","path":"/a/c","value":"x"}])).unwrap();
        assert_eq!(doc["a"]["c"], "x");
        assert!(run(&mut doc, json!([{"op":"replace","path":"/a/zz","value":1}])).is_err());
        assert!(run(&mut doc, json!([{"op":"remove","path":"/a/zz"}])).is_err());
        assert!(run(&mut doc, json!([{"op":"add","path":"/arr/7","value":1}])).is_err());
        assert!(run(&mut doc, json!([{"op":"add","path":"/no/such","value":1}])).is_err());
        let e = run(
            &mut doc,
            json!([{"op":"replace","path":"/a/b","value":"1"}]),
        )
        .unwrap_err();
        assert!(e.contains("number") && e.contains("string"), "{e}");
    }

    /// `@qlik/api` 2.19.0 `PatchRequest`: ops add/replace/remove only; values string, boolean,
    /// number or array (of anything); value required for add/replace, optional for remove.
    #[test]
    fn only_what_qlik_api_patch_request_allows() {
        let ok = [
            json!([{"op":"add","path":"/a","value":"s"}]),
            json!([{"op":"replace","path":"/a","value":true}]),
            json!([{"op":"replace","path":"/a","value":1.5}]),
            json!([{"op":"add","path":"/a","value":[{"name":"k","value":"v"}, null]}]),
            json!([{"op":"remove","path":"/a"}]),
            json!([{"op":"remove","path":"/a","value":"ignored"}]),
            json!([]),
        ];
        for body in ok {
            parse_patch_body(body.to_string().as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
        }
        let bad = [
            (
                json!([{"op":"test","path":"/a","value":1}]),
                "unsupported op \"test\"",
            ),
            (
                json!([{"op":"move","path":"/a","from":"/b"}]),
                "unsupported op \"move\"",
            ),
            (
                json!([{"op":"copy","path":"/a","from":"/b"}]),
                "unsupported op \"copy\"",
            ),
            (
                json!([{"op":"Replace","path":"/a","value":"x"}]),
                "unsupported op \"Replace\"",
            ),
            (json!([{"op":1,"path":"/a","value":"x"}]), "op is required"),
            (
                json!([{"op":"replace","path":"/a","value":{"k":"v"}}]),
                "not object",
            ),
            (json!([{"op":"add","path":"/a","value":null}]), "not null"),
            (
                json!([{"op":"remove","path":"/a","value":{}}]),
                "not object",
            ),
            (json!([{"op":"add","path":"/a"}]), "value is required"),
            (json!([{"op":"replace","path":"/a"}]), "value is required"),
        ];
        for (body, want) in bad {
            let e = parse_patch_body(body.to_string().as_bytes()).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
    }
}
