//! FHIR datatypes (CodeableConcept, Reference, Quantity, Period, …) on top of the JSON writer,
//! and the [`Emitter`] that turns one closure into one resource handed to the sink.

use crate::codes::{Code, UCUM};
use crate::json::{self, Arr, Dec, Obj};
use crate::output::{Id, RefStyle, ResourceType, Sink};
use crate::time::{Date, DateTime};

/// What the datatype writers need to know besides the value: how to write references, and the
/// UTC offset of the patient's place (for date-times).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx {
    pub refs: RefStyle,
    pub tz: i32,
}

impl Obj<'_> {
    /// `"key": {"reference": "…"}`.
    pub(crate) fn reference(&mut self, key: &str, ctx: Ctx, id: &Id) -> &mut Self {
        self.obj(key, |r| {
            r.reference_value(ctx, id);
        })
    }

    fn reference_value(&mut self, ctx: Ctx, id: &Id) -> &mut Self {
        self.raw_with("reference", |out| {
            out.push(b'"');
            id.write_reference(ctx.refs, out);
            out.push(b'"');
        })
    }

    /// `"key": [{"reference": "…"}, …]`.
    pub(crate) fn references(&mut self, key: &str, ctx: Ctx, ids: &[Id]) -> &mut Self {
        self.arr(key, |a| {
            for id in ids {
                a.reference(ctx, id);
            }
        })
    }

    /// A Coding's members (system, code, display) into this object.
    pub(crate) fn coding_members(&mut self, code: &Code) -> &mut Self {
        self.str("system", code.system).str("code", code.code).str("display", code.display)
    }

    /// `"key": {system, code, display}` (a Coding).
    pub(crate) fn coding(&mut self, key: &str, code: &Code) -> &mut Self {
        self.obj(key, |c| {
            c.coding_members(code);
        })
    }

    /// `"key": {"coding": [..], "text": display}` (a CodeableConcept with one coding).
    pub(crate) fn concept(&mut self, key: &str, code: &Code) -> &mut Self {
        self.obj(key, |c| {
            c.concept_members(&[code], code.display);
        })
    }

    /// A CodeableConcept with several codings of the same meaning; text from the first.
    pub(crate) fn concept_n(&mut self, key: &str, codes: &[&Code]) -> &mut Self {
        self.obj(key, |c| {
            c.concept_members(codes, codes[0].display);
        })
    }

    fn concept_members(&mut self, codes: &[&Code], text: &str) -> &mut Self {
        self.arr("coding", |a| {
            for code in codes {
                a.obj(|c| {
                    c.coding_members(code);
                });
            }
        })
        .str("text", text)
    }

    /// `"key": [CodeableConcept]`.
    pub(crate) fn concepts(&mut self, key: &str, code: &Code) -> &mut Self {
        self.arr(key, |a| {
            a.concept(code);
        })
    }

    /// A UCUM Quantity.
    pub(crate) fn quantity(&mut self, key: &str, value: Dec, unit: &str) -> &mut Self {
        self.obj(key, |q| {
            q.quantity_members(value, unit);
        })
    }

    fn quantity_members(&mut self, value: Dec, unit: &str) -> &mut Self {
        self.dec("value", value).str("unit", unit).str("system", UCUM).str("code", unit)
    }

    /// A UCUM Quantity with a comparator (`<`, `>=`, …).
    pub(crate) fn quantity_cmp(
        &mut self,
        key: &str,
        comparator: &str,
        value: Dec,
        unit: &str,
    ) -> &mut Self {
        self.obj(key, |q| {
            q.dec("value", value)
                .str("comparator", comparator)
                .str("unit", unit)
                .str("system", UCUM)
                .str("code", unit);
        })
    }

    pub(crate) fn date(&mut self, key: &str, date: Date) -> &mut Self {
        self.raw_with(key, |out| {
            out.push(b'"');
            date.write(out);
            out.push(b'"');
        })
    }

    pub(crate) fn datetime(&mut self, key: &str, ctx: Ctx, at: DateTime) -> &mut Self {
        self.raw_with(key, |out| {
            out.push(b'"');
            at.write(ctx.tz, out);
            out.push(b'"');
        })
    }

    pub(crate) fn period(
        &mut self,
        key: &str,
        ctx: Ctx,
        start: DateTime,
        end: Option<DateTime>,
    ) -> &mut Self {
        self.obj(key, |p| {
            p.datetime("start", ctx, start);
            if let Some(end) = end {
                p.datetime("end", ctx, end);
            }
        })
    }
}

impl Arr<'_> {
    pub(crate) fn reference(&mut self, ctx: Ctx, id: &Id) -> &mut Self {
        self.obj(|r| {
            r.reference_value(ctx, id);
        })
    }

    pub(crate) fn concept(&mut self, code: &Code) -> &mut Self {
        self.obj(|c| {
            c.concept_members(&[code], code.display);
        })
    }
}

/// Writes resources into a reusable buffer and hands each to the sink. The first sink error
/// is kept and reported by [`Emitter::check`]; later resources are dropped, so generating
/// code needs no error paths of its own.
pub(crate) struct Emitter<'s> {
    pub ctx: Ctx,
    buf: Vec<u8>,
    sink: &'s mut dyn Sink,
    /// Resources written, by [`ResourceType::index`].
    pub counts: [u64; ResourceType::ALL.len()],
    error: Option<anyhow::Error>,
}

impl<'s> Emitter<'s> {
    pub(crate) fn new(refs: RefStyle, sink: &'s mut dyn Sink) -> Emitter<'s> {
        Emitter {
            ctx: Ctx { refs, tz: 0 },
            buf: Vec::with_capacity(64 * 1024),
            sink,
            counts: [0; ResourceType::ALL.len()],
            error: None,
        }
    }

    /// Writes one resource: `resourceType`, `id`, `meta.profile`, then whatever `body` adds.
    pub(crate) fn write(&mut self, id: &Id, profile: &str, body: impl FnOnce(&mut Obj<'_>)) {
        self.buf.clear();
        json::object(&mut self.buf, |o| {
            o.ascii("resourceType", id.ty.name().as_bytes()).ascii("id", &id.uuid).obj(
                "meta",
                |m| {
                    m.str1("profile", profile);
                },
            );
            body(o);
        });
        self.counts[id.ty.index()] += 1;
        if self.error.is_none()
            && let Err(e) = self.sink.resource(id, &self.buf)
        {
            self.error = Some(e);
        }
    }

    pub(crate) fn sink(&mut self) -> &mut dyn Sink {
        &mut *self.sink
    }

    /// The first error the sink reported, if any.
    pub(crate) fn check(&mut self) -> anyhow::Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
