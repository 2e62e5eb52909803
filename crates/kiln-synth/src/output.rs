//! Where generated resources go: one transaction Bundle file per patient, or one NDJSON file
//! per resource type. Both stream through `BufWriter`s; nothing is kept after it is written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The resource types the generator writes, in the order the summary lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResourceType {
    Organization,
    Location,
    Practitioner,
    Patient,
    AllergyIntolerance,
    Encounter,
    Condition,
    Observation,
    DiagnosticReport,
    DocumentReference,
    Medication,
    MedicationRequest,
    Procedure,
    Immunization,
    CarePlan,
    CareTeam,
    Goal,
    Device,
    Provenance,
}

impl ResourceType {
    pub const ALL: [ResourceType; 19] = [
        ResourceType::Organization,
        ResourceType::Location,
        ResourceType::Practitioner,
        ResourceType::Patient,
        ResourceType::AllergyIntolerance,
        ResourceType::Encounter,
        ResourceType::Condition,
        ResourceType::Observation,
        ResourceType::DiagnosticReport,
        ResourceType::DocumentReference,
        ResourceType::Medication,
        ResourceType::MedicationRequest,
        ResourceType::Procedure,
        ResourceType::Immunization,
        ResourceType::CarePlan,
        ResourceType::CareTeam,
        ResourceType::Goal,
        ResourceType::Device,
        ResourceType::Provenance,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Organization => "Organization",
            ResourceType::Location => "Location",
            ResourceType::Practitioner => "Practitioner",
            ResourceType::Patient => "Patient",
            ResourceType::AllergyIntolerance => "AllergyIntolerance",
            ResourceType::Encounter => "Encounter",
            ResourceType::Condition => "Condition",
            ResourceType::Observation => "Observation",
            ResourceType::DiagnosticReport => "DiagnosticReport",
            ResourceType::DocumentReference => "DocumentReference",
            ResourceType::Medication => "Medication",
            ResourceType::MedicationRequest => "MedicationRequest",
            ResourceType::Procedure => "Procedure",
            ResourceType::Immunization => "Immunization",
            ResourceType::CarePlan => "CarePlan",
            ResourceType::CareTeam => "CareTeam",
            ResourceType::Goal => "Goal",
            ResourceType::Device => "Device",
            ResourceType::Provenance => "Provenance",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A generated resource's identity. `shared` resources (the directory of organizations,
/// locations and practitioners) live outside a patient's Bundle and are always referenced as
/// `Type/id`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Id {
    pub ty: ResourceType,
    pub uuid: [u8; 36],
    pub shared: bool,
}

/// How references to resources of the same Bundle are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefStyle {
    /// `urn:uuid:<id>`, the entry's `fullUrl` (transaction Bundles: the server rewrites them).
    Urn,
    /// `Type/id` (NDJSON: each line stands alone).
    Relative,
}

impl Id {
    /// Appends the reference text for this resource.
    pub(crate) fn write_reference(&self, style: RefStyle, out: &mut Vec<u8>) {
        if style == RefStyle::Urn && !self.shared {
            out.extend_from_slice(b"urn:uuid:");
        } else {
            out.extend_from_slice(self.ty.name().as_bytes());
            out.push(b'/');
        }
        out.extend_from_slice(&self.uuid);
    }
}

/// Receives every generated resource as JSON text.
pub(crate) trait Sink {
    /// Starts a new group (a Bundle file named `name`); NDJSON output ignores groups.
    fn begin(&mut self, name: &str) -> anyhow::Result<()>;
    fn resource(&mut self, id: &Id, json: &[u8]) -> anyhow::Result<()>;
    /// Ends the current group.
    fn end(&mut self) -> anyhow::Result<()>;
    /// Flushes everything; the sink is not used afterwards.
    fn finish(&mut self) -> anyhow::Result<()>;
    /// Bytes written so far.
    fn bytes(&self) -> u64;
}

/// A `BufWriter` over a file that remembers its path for error messages and counts bytes.
struct Output {
    path: PathBuf,
    file: BufWriter<File>,
    bytes: u64,
}

impl Output {
    fn create(path: PathBuf) -> anyhow::Result<Output> {
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Output { path, file: BufWriter::with_capacity(256 * 1024, file), bytes: 0 })
    }

    fn write(&mut self, parts: &[&[u8]]) -> anyhow::Result<()> {
        for part in parts {
            self.file
                .write_all(part)
                .with_context(|| format!("writing {}", self.path.display()))?;
            self.bytes += part.len() as u64;
        }
        Ok(())
    }

    fn close(mut self) -> anyhow::Result<u64> {
        self.file.flush().with_context(|| format!("writing {}", self.path.display()))?;
        Ok(self.bytes)
    }
}

/// One `transaction` Bundle file per group; each entry a `PUT` of the generated id, so
/// loading the same files twice leaves the same resources (a new version each).
pub(crate) struct BundleSink {
    dir: PathBuf,
    current: Option<Output>,
    entries: u64,
    bytes: u64,
}

impl BundleSink {
    pub(crate) fn new(dir: &Path) -> BundleSink {
        BundleSink { dir: dir.to_owned(), current: None, entries: 0, bytes: 0 }
    }
}

impl Sink for BundleSink {
    fn begin(&mut self, name: &str) -> anyhow::Result<()> {
        self.end()?;
        let mut out = Output::create(self.dir.join(name))?;
        out.write(&[b"{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"entry\":[\n"])?;
        self.current = Some(out);
        self.entries = 0;
        Ok(())
    }

    fn resource(&mut self, id: &Id, json: &[u8]) -> anyhow::Result<()> {
        let Some(out) = &mut self.current else {
            anyhow::bail!("a resource was generated outside a Bundle");
        };
        let ty = id.ty.name().as_bytes();
        let sep: &[u8] = if self.entries == 0 { b"" } else { b",\n" };
        self.entries += 1;
        out.write(&[
            sep,
            b"{\"fullUrl\":\"urn:uuid:",
            &id.uuid,
            b"\",\"resource\":",
            json,
            b",\"request\":{\"method\":\"PUT\",\"url\":\"",
            ty,
            b"/",
            &id.uuid,
            b"\"}}",
        ])
    }

    fn end(&mut self) -> anyhow::Result<()> {
        if let Some(mut out) = self.current.take() {
            out.write(&[b"\n]}\n"])?;
            self.bytes += out.close()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.end()
    }

    fn bytes(&self) -> u64 {
        self.bytes + self.current.as_ref().map_or(0, |out| out.bytes)
    }
}

/// One `<Type>.ndjson` file per resource type, opened when its first resource comes.
pub(crate) struct NdjsonSink {
    dir: PathBuf,
    files: Vec<Option<Output>>,
    closed_bytes: u64,
}

impl NdjsonSink {
    pub(crate) fn new(dir: &Path) -> NdjsonSink {
        NdjsonSink {
            dir: dir.to_owned(),
            files: ResourceType::ALL.iter().map(|_| None).collect(),
            closed_bytes: 0,
        }
    }
}

impl Sink for NdjsonSink {
    fn begin(&mut self, _name: &str) -> anyhow::Result<()> {
        Ok(())
    }

    fn resource(&mut self, id: &Id, json: &[u8]) -> anyhow::Result<()> {
        let slot = &mut self.files[id.ty.index()];
        let out = match slot {
            Some(out) => out,
            None => slot.insert(Output::create(self.dir.join(format!("{}.ndjson", id.ty.name())))?),
        };
        out.write(&[json, b"\n"])
    }

    fn end(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        for slot in &mut self.files {
            if let Some(out) = slot.take() {
                self.closed_bytes += out.close()?;
            }
        }
        Ok(())
    }

    fn bytes(&self) -> u64 {
        self.closed_bytes + self.files.iter().flatten().map(|out| out.bytes).sum::<u64>()
    }
}
