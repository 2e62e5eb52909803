//! Required-binding checks: codes of `code`, `Coding`, `CodeableConcept` and `Quantity`
//! values against value sets that `kiln-definitions` could enumerate.

use kiln_definitions::ValueSetDef;
use kiln_model::IssueCode;
use serde_json::Value;

/// Checks one value of an element with a required binding. Returns an error message when the
/// value uses a code outside the value set. Values the check cannot judge (non-enumerable
/// value sets, no code, shapes already reported elsewhere) pass.
pub(crate) fn check(
    value: &Value,
    type_code: &str,
    vs: &ValueSetDef,
) -> Option<(IssueCode, String)> {
    if !vs.enumerable {
        return None;
    }
    match type_code {
        "code" => {
            let code = value.as_str()?;
            (!vs.contains(None, code)).then(|| not_in(code, None, vs))
        }
        "Coding" | "Quantity" => coding_error(value, vs),
        "CodeableConcept" => {
            let codings = value.get("coding")?.as_array()?;
            let mut judged = false;
            for coding in codings {
                let Some(code) = coding.get("code").and_then(Value::as_str) else { continue };
                let system = coding.get("system").and_then(Value::as_str);
                if vs.contains(system, code) {
                    return None;
                }
                // Codings from systems foreign to the value set may be translations; only a
                // coding claiming one of its systems makes the concept judgeable.
                judged |= system.is_some_and(|s| vs.has_system(s));
            }
            judged.then(|| {
                (
                    IssueCode::CodeInvalid,
                    format!(
                        "None of the codings is in the required value set {} (found {})",
                        vs.url,
                        list_codings(codings)
                    ),
                )
            })
        }
        _ => None,
    }
}

fn coding_error(value: &Value, vs: &ValueSetDef) -> Option<(IssueCode, String)> {
    let code = value.get("code")?.as_str()?;
    let system = value.get("system").and_then(Value::as_str);
    (!vs.contains(system, code)).then(|| not_in(code, system, vs))
}

fn not_in(code: &str, system: Option<&str>, vs: &ValueSetDef) -> (IssueCode, String) {
    let shown = match system {
        Some(system) => format!("{system}#{code}"),
        None => code.to_string(),
    };
    (
        IssueCode::CodeInvalid,
        format!("The code '{shown}' is not in the required value set {}", vs.url),
    )
}

fn list_codings(codings: &[Value]) -> String {
    let shown: Vec<String> = codings
        .iter()
        .take(5)
        .map(|c| {
            let code = c.get("code").and_then(Value::as_str).unwrap_or("?");
            match c.get("system").and_then(Value::as_str) {
                Some(system) => format!("{system}#{code}"),
                None => code.to_string(),
            }
        })
        .collect();
    shown.join(", ")
}
