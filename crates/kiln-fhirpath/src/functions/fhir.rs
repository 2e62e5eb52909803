//! FHIR-specific and utility functions: `extension(url)`, `hasValue()`, `getValue()`,
//! `resolve()`, `conformsTo()`, `type()`, `htmlChecks()`, the terminology functions (through
//! the context's callbacks), `now()`/`today()`/
//! `timeOfDay()`, and `lowBoundary`/`highBoundary`/`precision`/`comparable`.

use super::{Call, boolean, opt};
use crate::Subsumption;
use crate::datetime::{Date, DateTime, Parts, Precision, Time};
use crate::eval::Res;
use crate::navigate;
use crate::quantity::Quantity;
use crate::types::{Item, Json, Node};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};
use std::sync::Arc;

pub(super) fn call<'a>(c: &Call<'_, '_, 'a, '_>, name: &str) -> Option<Res<'a>> {
    let now = DateTime::from_chrono(&c.ev.ctx.now());
    Some(match name {
        "now" => Ok(vec![Item::DateTime(now)]),
        "today" => Ok(vec![Item::Date(now.date())]),
        "timeOfDay" => Ok(vec![Item::Time(now.time())]),
        "extension" => extension(c),
        "hasValue" => (|| {
            let value = c.single()?.and_then(|i| match i {
                Item::Node(n) => n.value().filter(|v| !v.is_object() && !v.is_array()),
                _ => None,
            });
            boolean(value.is_some())
        })(),
        "getValue" => (|| {
            let item = c.single()?;
            opt(item
                .filter(|i| matches!(i, Item::Node(n) if n.value().is_some_and(|v| !v.is_object())))
                .and_then(Item::to_system))
        })(),
        "resolve" => resolve(c),
        "htmlChecks" | "htmlchecks" => (|| match c.single()? {
            None => Ok(Vec::new()),
            Some(item) => boolean(item.as_str().is_some_and(crate::html::narrative_ok)),
        })(),
        "memberOf" => member_of(c),
        "subsumes" => subsumes(c, false),
        "subsumedBy" => subsumes(c, true),
        "conformsTo" => conforms_to(c),
        "type" => Ok(c
            .input
            .iter()
            .map(|item| {
                let (ns, name) = item.type_name();
                let info = json!({ "namespace": ns, "name": name });
                Item::Node(Node::from_json(Json::Shared(Arc::new(info)), Some(Arc::from(name))))
            })
            .collect()),
        "lowBoundary" | "highBoundary" => boundary(c, name == "highBoundary"),
        "precision" => (|| {
            let Some(v) = c.single_value()? else { return Ok(Vec::new()) };
            let digits = match &v {
                Item::Decimal(d) => d.scale() as i64,
                Item::Integer(_) => 0,
                Item::Date(d) => date_digits(d.0.precision, false),
                Item::DateTime(d) => date_digits(d.0.precision, false),
                Item::Time(t) => date_digits(t.0.precision, true),
                _ => return Ok(Vec::new()),
            };
            Ok(vec![Item::Integer(digits)])
        })(),
        "comparable" => (|| {
            let (Some(Item::Quantity(a)), Some(Item::Quantity(b))) =
                (c.single_value()?, c.arg_single(0)?)
            else {
                return Ok(Vec::new());
            };
            boolean(a.convert_other(&b).is_some())
        })(),
        _ => return None,
    })
}

/// The codes an item carries, each with its system when known: one for a code (or string) or a
/// Coding, one per coding for a CodeableConcept. `None` for anything else.
fn codes(item: &Item<'_>) -> Option<Vec<(Option<String>, String)>> {
    let coding = |v: &Value| {
        let code = v.get("code")?.as_str()?.to_string();
        Some((v.get("system").and_then(Value::as_str).map(str::to_string), code))
    };
    match item {
        Item::String(s) => Some(vec![(None, s.clone())]),
        Item::Node(n) => match n.value()? {
            Value::String(s) => Some(vec![(None, s.clone())]),
            v @ Value::Object(o) if o.contains_key("coding") || n.ty == Some("CodeableConcept") => {
                let codings = v.get("coding").and_then(Value::as_array);
                Some(codings.into_iter().flatten().filter_map(coding).collect())
            }
            v @ Value::Object(_) => coding(v).map(|c| vec![c]),
            _ => None,
        },
        _ => None,
    }
}

/// `memberOf(valueSet)`: true when any code of the input is in the value set, false when the
/// terminology says none is, empty when it does not know.
fn member_of<'a>(c: &Call<'_, '_, 'a, '_>) -> Res<'a> {
    let Some(url) = c.arg_string(0)? else { return Ok(Vec::new()) };
    let Some(item) = c.single()? else { return Ok(Vec::new()) };
    let (Some(terminology), Some(codes)) = (c.ev.ctx.terminology, codes(item)) else {
        return Ok(Vec::new());
    };
    let mut unknown = false;
    for (system, code) in &codes {
        match terminology.member_of(system.as_deref(), code, &url) {
            Some(true) => return boolean(true),
            Some(false) => {}
            None => unknown = true,
        }
    }
    if unknown { Ok(Vec::new()) } else { boolean(false) }
}

/// `subsumes(code)` (or `subsumedBy(code)` when `by`): true when some code of the input is
/// equivalent to, or an ancestor (a descendant) of, some code of the argument. Codes of two
/// different systems are not related; a pair the terminology does not know makes the answer
/// empty unless another pair is related.
fn subsumes<'a>(c: &Call<'_, '_, 'a, '_>, by: bool) -> Res<'a> {
    let Some(item) = c.single()? else { return Ok(Vec::new()) };
    let arg = c.arg(0)?;
    let Some(other) = c.ev.singleton(&arg, c.at)? else { return Ok(Vec::new()) };
    let (Some(left), Some(right)) = (codes(item), codes(other)) else { return Ok(Vec::new()) };
    let wanted = if by { Subsumption::SubsumedBy } else { Subsumption::Subsumes };
    let mut unknown = false;
    for (system_a, code_a) in &left {
        for (system_b, code_b) in &right {
            let system = match (system_a, system_b) {
                (Some(a), Some(b)) if a != b => continue,
                (a, b) => a.as_deref().or(b.as_deref()),
            };
            let relation = if code_a == code_b && system_a == system_b {
                Some(Subsumption::Equivalent)
            } else {
                c.ev.ctx.terminology.and_then(|t| t.subsumes(system, code_a, code_b))
            };
            match relation {
                Some(r) if r == wanted || r == Subsumption::Equivalent => return boolean(true),
                Some(_) => {}
                None => unknown = true,
            }
        }
    }
    if unknown { Ok(Vec::new()) } else { boolean(false) }
}

/// `conformsTo(url)`: a base type's definition is a type test; any other profile goes to the
/// context's [`crate::Conformance`] (empty when it does not know the profile, an error when
/// there is none).
fn conforms_to<'a>(c: &Call<'_, '_, 'a, '_>) -> Res<'a> {
    let Some(url) = c.arg_string(0)? else { return Ok(Vec::new()) };
    let Some(item) = c.single()? else { return Ok(Vec::new()) };
    let base = url
        .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
        .filter(|t| kiln_definitions::definitions().type_def(t).is_some());
    if let Some(ty) = base {
        return boolean(item.is_type(&crate::ast::TypeSpec::Fhir(ty.to_string())));
    }
    let Some(conformance) = c.ev.ctx.conformance else {
        return Err(c.err(format!("unknown profile {url}")));
    };
    let resource = match item {
        Item::Node(n) => n.value().filter(|v| v.is_object()),
        _ => None,
    };
    opt(resource.and_then(|r| conformance.conforms_to(r, &url)).map(Item::Boolean))
}

fn extension<'a>(c: &Call<'_, '_, 'a, '_>) -> Res<'a> {
    let Some(url) = c.arg_string(0)? else { return Ok(Vec::new()) };
    let mut exts = Vec::new();
    for item in &c.input {
        if let Item::Node(n) = item {
            navigate::child(n, "extension", &mut exts);
        }
    }
    Ok(exts
        .into_iter()
        .filter(|e| match e {
            Item::Node(n) => {
                n.value().and_then(|v| v.get("url")).and_then(Value::as_str) == Some(&url)
            }
            _ => false,
        })
        .collect())
}

/// `Type/id` at the end of a reference (relative, absolute or with `_history/n`).
fn type_and_id(reference: &str) -> Option<(&str, &str)> {
    let path = reference.split(['?', '#']).next()?;
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    let (ty, id) = if n >= 4 && parts[n - 2] == "_history" {
        (parts[n - 4], parts[n - 3])
    } else if n >= 2 {
        (parts[n - 2], parts[n - 1])
    } else {
        return None;
    };
    let known = kiln_definitions::definitions().is_resource_type(ty);
    (known && !id.is_empty()).then_some((ty, id))
}

fn resolve<'a>(c: &Call<'_, '_, 'a, '_>) -> Res<'a> {
    let ctx = c.ev.ctx;
    let mut out = Vec::new();
    for item in &c.input {
        let reference = match item {
            Item::Node(n) if n.value().is_some_and(Value::is_object) => n
                .value()
                .and_then(|v| v.get("reference"))
                .and_then(Value::as_str)
                .map(str::to_string),
            other => other.as_str().map(str::to_string),
        };
        let Some(reference) = reference else { continue };
        if let Some(id) = reference.strip_prefix('#') {
            let contained = [ctx.resource, ctx.root_resource].into_iter().find_map(|r| {
                r.get("contained")?
                    .as_array()?
                    .iter()
                    .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
            });
            out.extend(contained.map(Item::resource));
            continue;
        }
        let in_bundle =
            ctx.root_resource.get("entry").and_then(Value::as_array).and_then(|entries| {
                entries
                    .iter()
                    .find(|e| e.get("fullUrl").and_then(Value::as_str) == Some(reference.as_str()))
                    .and_then(|e| e.get("resource"))
            });
        if let Some(found) = in_bundle {
            out.push(Item::resource(found));
            continue;
        }
        if let Some(resolver) = ctx.resolver {
            if let Some(v) = resolver.resolve(&reference) {
                out.push(Item::Node(Node::from_json(Json::Shared(Arc::new(v)), None)));
            }
            continue;
        }
        if let Some((ty, id)) = type_and_id(&reference) {
            let stub = json!({ "resourceType": ty, "id": id });
            out.push(Item::Node(Node::from_json(Json::Shared(Arc::new(stub)), None)));
        }
    }
    Ok(out)
}

fn date_digits(p: Precision, time: bool) -> i64 {
    let date = match p {
        Precision::Year => 4,
        Precision::Month => 6,
        Precision::Day => 8,
        Precision::Hour => 10,
        Precision::Minute => 12,
        Precision::Second => 14,
        Precision::Millisecond => 17,
    };
    if time { date - 8 } else { date }
}

fn precision_of(digits: i64, time: bool) -> Option<Precision> {
    let digits = if time { digits + 8 } else { digits };
    Some(match digits {
        4 => Precision::Year,
        6 => Precision::Month,
        8 => Precision::Day,
        10 => Precision::Hour,
        12 => Precision::Minute,
        14 => Precision::Second,
        17 => Precision::Millisecond,
        _ => return None,
    })
}

/// Fills the components below the value's precision with their lowest or highest values.
fn fill(p: &Parts, target: Precision, high: bool) -> Parts {
    let mut out = *p;
    // An hour alone (`T08`) is read as `08:00`.
    let from = if p.precision == Precision::Hour { Precision::Minute } else { p.precision };
    let pick = |low: u32, hi: u32| if high { hi } else { low };
    if from < Precision::Month {
        out.month = pick(1, 12);
    }
    if from < Precision::Day {
        out.day = pick(1, days_in(out.year, out.month));
    }
    if from < Precision::Hour {
        out.hour = pick(0, 23);
    }
    if from < Precision::Minute {
        out.minute = pick(0, 59);
    }
    if from < Precision::Second {
        out.second = pick(0, 59);
    }
    if from < Precision::Millisecond {
        out.millisecond = pick(0, 999);
    }
    out.precision = target;
    out
}

fn days_in(year: i32, month: u32) -> u32 {
    (28..=31)
        .rev()
        .find(|d| Date::parse(&format!("{year:04}-{month:02}-{d:02}")).is_some())
        .unwrap_or(28)
}

fn boundary<'a>(c: &Call<'_, '_, 'a, '_>, high: bool) -> Res<'a> {
    let Some(v) = c.single_value()? else { return Ok(Vec::new()) };
    let digits = c.arg_integer(0)?;
    let decimal = |d: Decimal| -> Option<Decimal> {
        let p = digits.unwrap_or(8);
        if !(0..=28).contains(&p) {
            return None;
        }
        let half = Decimal::new(5, d.scale() + 1);
        let edge = if high { d.checked_add(half)? } else { d.checked_sub(half)? };
        let strategy = if high {
            RoundingStrategy::ToPositiveInfinity
        } else {
            RoundingStrategy::ToNegativeInfinity
        };
        let mut r = edge.round_dp_with_strategy(p as u32, strategy);
        r.rescale(p as u32);
        Some(r)
    };
    let result = match v {
        Item::Integer(i) => decimal(Decimal::from(i)).map(Item::Decimal),
        Item::Decimal(d) => decimal(d).map(Item::Decimal),
        Item::Quantity(q) => decimal(q.value).map(|d| Item::Quantity(Quantity::new(d, q.unit))),
        Item::Date(d) => {
            let target = precision_of(digits.unwrap_or(8), false).filter(|p| *p <= Precision::Day);
            target.map(|t| Item::Date(Date(fill(&d.0, t, high))))
        }
        Item::DateTime(d) => precision_of(digits.unwrap_or(17), false).map(|t| {
            let mut p = fill(&d.0, t, high);
            if t >= Precision::Hour && p.offset.is_none() {
                p.offset = Some(if high { -12 * 60 } else { 14 * 60 });
            }
            if t <= Precision::Day { Item::Date(Date(p)) } else { Item::DateTime(DateTime(p)) }
        }),
        Item::Time(t) => precision_of(digits.unwrap_or(9), true)
            .filter(|p| *p >= Precision::Hour)
            .map(|target| Item::Time(Time(fill(&t.0, target, high)))),
        _ => None,
    };
    opt(result)
}
