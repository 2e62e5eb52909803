//! Query parsing: names, modifiers, chains, `_has`, values, result parameters and errors.

use kiln_search::{
    Contained, Criterion, Filter, Include, Modifier, Prefix, RefQuery, SearchParamType,
    SearchQuery, SortKey, Summary, SystemMatch, TextScope, Total, date_range, parse, parse_at,
};

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

fn ok(ty: &str, list: &[(&str, &str)]) -> SearchQuery {
    parse(ty, &pairs(list)).unwrap_or_else(|e| panic!("{list:?}: {e:?}"))
}

fn err(ty: &str, list: &[(&str, &str)]) -> String {
    match parse(ty, &pairs(list)) {
        Ok(q) => panic!("{list:?} parsed: {q:?}"),
        Err(issues) => issues.iter().map(|i| i.diagnostics.clone()).collect::<Vec<_>>().join("; "),
    }
}

fn values(f: &Filter) -> (&str, &Modifier, &[Criterion]) {
    match f {
        Filter::Values { code, modifier, values, .. } => (code, modifier, values),
        other => panic!("not a value filter: {other:?}"),
    }
}

#[test]
fn tokens_with_and_without_systems() {
    let q = ok("Observation", &[("code", "http://loinc.org|8867-4,|abc,http://s|,plain")]);
    let (code, modifier, vals) = values(&q.filters[0]);
    assert_eq!((code, modifier), ("code", &Modifier::None));
    assert_eq!(
        vals,
        &[
            Criterion::Token {
                system: SystemMatch::Is("http://loinc.org".into()),
                code: Some("8867-4".into())
            },
            Criterion::Token { system: SystemMatch::NoSystem, code: Some("abc".into()) },
            Criterion::Token { system: SystemMatch::Is("http://s".into()), code: None },
            Criterion::Token { system: SystemMatch::Any, code: Some("plain".into()) },
        ]
    );
    let q = ok("Patient", &[("identifier:of-type", "http://t|MR|123"), ("gender:not", "male")]);
    assert!(matches!(&q.filters[0], Filter::Values { modifier: Modifier::OfType, .. }));
    assert!(matches!(&q.filters[1], Filter::Values { modifier: Modifier::Not, .. }));
    let q = ok("Observation", &[("code:text", "Héart")]);
    assert_eq!(values(&q.filters[0]).2, &[Criterion::Text("heart".into())]);
    assert!(err("Patient", &[("identifier:of-type", "a|b")]).contains("identifier:of-type"));
    assert!(err("Observation", &[("code", "|")]).contains("'code'"));
}

#[test]
fn escaping_commas_and_repeats() {
    let q = ok("Patient", &[("name", r"a\,b,c"), ("name", "d")]);
    assert_eq!(q.filters.len(), 2, "repeated parameters are ANDed");
    let (_, _, vals) = values(&q.filters[0]);
    assert_eq!(vals.len(), 2);
    assert_eq!(vals[0], Criterion::String { exact: "a,b".into(), normalized: "a,b".into() });
    let q = ok("Patient", &[("name:exact", "Müller"), ("family:contains", "ll")]);
    assert_eq!(values(&q.filters[0]).1, &Modifier::Exact);
    assert_eq!(values(&q.filters[1]).1, &Modifier::Contains);
    assert_eq!(ok("Patient", &[("name", "")]).filters.len(), 0, "empty values are ignored");
}

#[test]
fn prefixes_and_precision() {
    for (p, want) in [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
    ] {
        let q = ok("Patient", &[("birthdate", &format!("{p}2020-02"))]);
        let want_range = date_range("2020-02").unwrap();
        assert_eq!(values(&q.filters[0]).2, &[Criterion::Date { prefix: want, range: want_range }]);
    }
    let now =
        chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap().timestamp_millis();
    let q = parse_at("Patient", &pairs(&[("birthdate", "ap2020")]), now).unwrap();
    let Criterion::Date { prefix: Prefix::Ap, range } = &values(&q.filters[0]).2[0] else {
        panic!()
    };
    let plain = date_range("2020").unwrap();
    assert!(range.lo < plain.lo - 300 * 86_400_000 && range.hi > plain.hi + 300 * 86_400_000);

    let q = ok("RiskAssessment", &[("probability", "gt0.5,100")]);
    let vals = values(&q.filters[0]).2;
    assert!(
        matches!(&vals[0], Criterion::Number { prefix: Prefix::Gt, range } if range.lo == 0.45 && range.hi == 0.55)
    );
    assert!(
        matches!(&vals[1], Criterion::Number { prefix: Prefix::Eq, range } if range.lo == 99.5)
    );
    let q = ok("RiskAssessment", &[("probability", "ap100")]);
    assert!(
        matches!(&values(&q.filters[0]).2[0], Criterion::Number { range, .. } if range.lo == 90.0 && range.hi == 110.0)
    );

    let e = err("Patient", &[("birthdate", "xx2020")]);
    assert!(e.contains("'birthdate'") && e.contains("prefix"), "{e}");
    assert!(err("Patient", &[("birthdate", "2020-13-45")]).contains("'birthdate'"));
    assert!(err("RiskAssessment", &[("probability", "abc")]).contains("'probability'"));
}

#[test]
fn quantities() {
    let q =
        ok("Observation", &[("value-quantity", "le5.4|http://unitsofmeasure.org|mg,5.4||mg,5")]);
    let vals = values(&q.filters[0]).2;
    // A UCUM value is converted to base units (grams), in the system of the index's copies.
    assert!(
        matches!(&vals[0], Criterion::Quantity { prefix: Prefix::Le, system: Some(s), code: Some(c), range, .. }
        if s == kiln_search::UCUM_CANONICAL && c == "g" && range.min == 0.0054)
    );
    assert!(
        matches!(&vals[1], Criterion::Quantity { system: None, code: Some(c), .. } if c == "mg")
    );
    assert!(matches!(&vals[2], Criterion::Quantity { system: None, code: None, .. }));
    assert!(err("Observation", &[("value-quantity", "5|mg")]).contains("'value-quantity'"));
}

#[test]
fn references_and_types() {
    let q = ok("Observation", &[("subject", "Patient/1,2,http://x.org/fhir/Patient/3")]);
    assert_eq!(
        values(&q.filters[0]).2,
        &[
            Criterion::Reference(RefQuery::Local {
                target_type: Some("Patient".into()),
                id: "1".into()
            }),
            Criterion::Reference(RefQuery::Local { target_type: None, id: "2".into() }),
            Criterion::Reference(RefQuery::Url {
                url: "http://x.org/fhir/Patient/3".into(),
                version: None,
                local: Some(("Patient".into(), "3".into()))
            }),
        ]
    );
    let q = ok(
        "Observation",
        &[("subject:Patient", "7"), ("patient", "8"), ("subject:identifier", "urn:x|9")],
    );
    assert_eq!(
        values(&q.filters[0]).2,
        &[Criterion::Reference(RefQuery::Local {
            target_type: Some("Patient".into()),
            id: "7".into()
        })]
    );
    assert_eq!(
        values(&q.filters[1]).2,
        &[Criterion::Reference(RefQuery::Local {
            target_type: Some("Patient".into()),
            id: "8".into()
        })]
    );
    assert_eq!(values(&q.filters[2]).1, &Modifier::Identifier);
    let q = ok("QuestionnaireResponse", &[("questionnaire", "http://x.org/Questionnaire/q|2")]);
    assert_eq!(
        values(&q.filters[0]).2,
        &[Criterion::Reference(RefQuery::Url {
            url: "http://x.org/Questionnaire/q".into(),
            version: Some("2".into()),
            local: Some(("Questionnaire".into(), "q".into()))
        })]
    );
    assert!(err("Observation", &[("subject:Patient", "Group/1")]).contains("'subject:Patient'"));
    assert!(err("Observation", &[("subject:Nonsense", "1")]).contains("'subject:Nonsense'"));
}

#[test]
fn modifiers_are_checked() {
    assert!(err("Patient", &[("name:not", "x")]).contains("'name:not'"));
    assert!(err("Patient", &[("birthdate:exact", "2020")]).contains("'birthdate:exact'"));
    // Terminology modifiers parse; the engine expands them.
    let q = ok("Observation", &[("code:in", "http://vs"), ("code:below", "http://sys|a")]);
    assert!(matches!(&q.filters[0], Filter::Values { modifier: Modifier::In, values, .. }
        if values == &[Criterion::ValueSet("http://vs".into())]));
    assert!(matches!(&q.filters[1], Filter::Values { modifier: Modifier::Below, .. }));
    assert!(err("Observation", &[("code:below", "a")]).contains("system|code"));
    assert!(err("Patient", &[("name:in", "http://vs")]).contains("'name:in'"));
    assert!(err("Patient", &[("name:missing", "maybe")]).contains("'name:missing'"));
    let q = ok("Patient", &[("name:missing", "true"), ("birthdate:missing", "false")]);
    assert_eq!(
        q.filters[0],
        Filter::Missing { code: "name".into(), kind: SearchParamType::String, missing: true }
    );
    assert_eq!(
        q.filters[1],
        Filter::Missing { code: "birthdate".into(), kind: SearchParamType::Date, missing: false }
    );
    let q = ok("ValueSet", &[("url:below", "http://x.org/"), ("url:above", "http://x.org/a/b")]);
    assert_eq!(values(&q.filters[0]).1, &Modifier::Below);
    assert_eq!(values(&q.filters[1]).1, &Modifier::Above);
}

#[test]
fn chains_and_has() {
    let q = ok(
        "Observation",
        &[("subject.name", "peter"), ("subject:Patient.organization.name", "acme")],
    );
    let Filter::Chain { code, types, then } = &q.filters[0] else { panic!("{q:?}") };
    assert_eq!(code, "subject");
    assert!(
        types.contains(&"Patient".to_string()) && !types.contains(&"Device".to_string()),
        "{types:?}"
    );
    assert!(matches!(then.as_ref(), Filter::Values { code, .. } if code == "name"));
    let Filter::Chain { types, then, .. } = &q.filters[1] else { panic!() };
    assert_eq!(types, &["Patient".to_string()]);
    assert!(matches!(then.as_ref(), Filter::Chain { code, .. } if code == "organization"));
    ok("Encounter", &[("subject:Patient.organization.partof.name", "x")]);
    assert!(
        err("Encounter", &[("subject:Patient.organization.partof.partof.name", "x")])
            .contains("limited")
    );
    assert!(err("Observation", &[("code.name", "x")]).contains("'code.name'"));

    let q = ok("Patient", &[("_has:Observation:patient:code", "1234-5")]);
    let Filter::Has { source_type, param, then } = &q.filters[0] else { panic!() };
    assert_eq!((source_type.as_str(), param.as_str()), ("Observation", "patient"));
    assert!(matches!(then.as_ref(), Filter::Values { code, .. } if code == "code"));
    let q = ok(
        "Patient",
        &[("_has:Observation:patient:_has:AuditEvent:entity:agent", "Practitioner/1")],
    );
    assert!(
        matches!(&q.filters[0], Filter::Has { then, .. } if matches!(then.as_ref(), Filter::Has { .. }))
    );
    assert!(err("Patient", &[("_has:Observation:code:code", "x")]).contains("not a reference"));
    assert!(err("Patient", &[("_has:Observation", "x")]).contains("_has"));
}

#[test]
fn result_parameters() {
    let q = ok(
        "Observation",
        &[
            ("_count", "5000"),
            ("_sort", "-date,code"),
            ("_include", "Observation:subject:Patient"),
            ("_revinclude:iterate", "Provenance:target"),
            ("_include", "*"),
            ("_total", "accurate"),
            ("_summary", "count"),
            ("_elements", "id,code"),
            ("_contained", "both"),
            ("_format", "json"),
        ],
    );
    assert_eq!(q.count, 1000);
    assert_eq!(
        q.sort,
        vec![
            SortKey { code: "date".into(), kind: SearchParamType::Date, descending: true },
            SortKey { code: "code".into(), kind: SearchParamType::Token, descending: false }
        ]
    );
    assert_eq!(
        q.include[0],
        Include {
            source_type: Some("Observation".into()),
            param: Some("subject".into()),
            target_type: Some("Patient".into()),
            iterate: false
        }
    );
    assert_eq!(
        q.include[1],
        Include { source_type: None, param: None, target_type: None, iterate: false }
    );
    assert!(q.revinclude[0].iterate);
    assert_eq!(
        (q.total, q.summary, q.contained),
        (Some(Total::Accurate), Some(Summary::Count), Some(Contained::Both))
    );
    assert_eq!(q.elements, vec!["id", "code"]);
    // `_contained` is a result parameter like the others.
    assert!(q.filters.is_empty());
    assert!(q.unknown.is_empty());
    assert!(ok("Patient", &[("_contained", "false")]).unknown.is_empty());
    assert_eq!(ok("Patient", &[]).count, 20);
    for bad in [
        ("_count", "-1"),
        ("_sort", "nope"),
        ("_include", "Observation:code"),
        ("_total", "all"),
        ("_summary", "x"),
    ] {
        assert!(err("Observation", &[bad]).contains(&format!("'{}'", bad.0)), "{bad:?}");
    }
}

#[test]
fn unknown_parameters_and_system_search() {
    let q = ok("Patient", &[("foo", "bar"), ("_query", "x"), ("name", "a")]);
    assert_eq!(
        q.unknown.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        vec!["foo", "_query"]
    );
    assert_eq!(q.filters.len(), 1);
    let q = ok("Location", &[("near", "1|2|3|km")]);
    assert_eq!(q.unknown.len(), 1);
    let q = ok("", &[("_type", "Patient,Observation"), ("_id", "a"), ("_lastUpdated", "ge2020")]);
    assert_eq!(q.resource_type, None);
    assert_eq!(q.types, vec!["Patient", "Observation"]);
    assert_eq!(q.filters.len(), 2);
    assert!(matches!(&q.filters[0], Filter::Values { kind: SearchParamType::Token, .. }));
    assert!(err("", &[("_type", "Nope")]).contains("'_type'"));
    assert!(parse("Nope", &[]).is_err());
}

#[test]
fn text_content_and_list() {
    // Phrases, ASCII-folded, commas separating alternatives (an escaped one is text).
    let q = ok("Patient", &[("_content", "Heart RATE,Zürich\\,ÉTÉ"), ("_text", "x")]);
    assert_eq!(
        q.filters,
        vec![
            Filter::Text {
                scope: TextScope::Content,
                phrases: vec!["heart rate".into(), "zürich,ÉtÉ".into()],
            },
            Filter::Text { scope: TextScope::Narrative, phrases: vec!["x".into()] },
        ]
    );
    assert!(q.unknown.is_empty());
    // Through a chain too.
    let q = ok("Observation", &[("subject:Patient._text", "a")]);
    let Filter::Chain { then, .. } = &q.filters[0] else { panic!("{q:?}") };
    assert!(matches!(then.as_ref(), Filter::Text { scope: TextScope::Narrative, .. }));
    assert!(err("Patient", &[("_text:exact", "x")]).contains("'_text'"));
    assert!(err("Patient", &[("_content", ",")]).contains("no value"));
    // `_list=a,b` is `_has:List:item:_id=a,b`.
    let q = ok("Patient", &[("_list", "a,b")]);
    assert_eq!(q.filters, ok("Patient", &[("_has:List:item:_id", "a,b")]).filters);
    let q = ok("Observation", &[("patient._list", "a")]);
    let Filter::Chain { then, .. } = &q.filters[0] else { panic!("{q:?}") };
    assert!(matches!(then.as_ref(), Filter::Has { source_type, param, .. }
        if source_type == "List" && param == "item"));
    let q = ok("Patient", &[("_list", "$current-allergies")]);
    assert!(q.filters.is_empty());
    assert!(q.unknown[0].reason.contains("$current-allergies"), "{:?}", q.unknown);
    assert!(err("Patient", &[("_list:x", "a")]).contains("'_list'"));
}

#[test]
fn composites() {
    let q = ok("Observation", &[("component-code-value-quantity", "http://loinc.org|8480-6$lt60")]);
    let (_, _, vals) = values(&q.filters[0]);
    let [Criterion::Composite(parts)] = vals else { panic!("{vals:?}") };
    assert!(matches!(&parts[0], Criterion::Token { .. }));
    assert!(matches!(&parts[1], Criterion::Quantity { prefix: Prefix::Lt, .. }));
    assert!(err("Observation", &[("component-code-value-quantity", "x")]).contains("components"));
}

#[test]
fn compartment_parameter() {
    let q = ok("Observation", &[("_compartment", "Patient/p1")]);
    assert_eq!(
        q.filters,
        vec![Filter::Compartment { compartment: "Patient".into(), ids: Some(vec!["p1".into()]) }]
    );
    let q = ok("Observation", &[("_compartment", "Patient/p1,Patient/p2")]);
    assert!(matches!(&q.filters[0], Filter::Compartment { ids: Some(ids), .. } if ids.len() == 2));
    assert!(err("Observation", &[("_compartment", "p1")]).contains("Type/id"));
    assert!(err("Observation", &[("_compartment:exact", "Patient/p1")]).contains("modifier"));
    let q = ok("Observation", &[("_compartment", "Encounter/e1")]);
    assert!(q.filters.is_empty() && q.unknown.len() == 1, "only Patient compartments: {q:?}");
}

#[test]
fn filters_are_decided_for_a_known_type() {
    let q = ok("Observation", &[("code", "1")]);
    let code = q.filters[0].clone();
    let ty = |t: &str| Filter::Type(vec![t.to_owned()]);
    let policy = Filter::Or(vec![
        Filter::And(vec![ty("Observation"), code.clone()]),
        ty("Patient"),
        Filter::And(vec![Filter::Not(Box::new(ty("Observation"))), code.clone()]),
    ]);
    assert_eq!(policy.for_type("Observation"), code);
    assert_eq!(policy.for_type("Patient"), Filter::And(vec![]));
    assert_eq!(policy.for_type("Encounter"), code);
    assert_eq!(Filter::Or(vec![ty("Patient")]).for_type("Group"), Filter::Or(vec![]));
    // Levels below are other resources: their Type conditions stay.
    let has = Filter::Has { source_type: "X".into(), param: "p".into(), then: Box::new(ty("Y")) };
    assert_eq!(has.for_type("Z"), has);
}
