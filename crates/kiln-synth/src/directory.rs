//! The shared directory every patient record points into: per city a primary-care clinic and
//! a hospital (each an Organization with its Location) and their practitioners.
//!
//! Its size is fixed ([`CITIES`] × 2 sites) and it depends on the seed alone, so a patient's
//! record never depends on how many patients are generated.

use crate::codes::{self, Code, profile};
use crate::fhir::Emitter;
use crate::output::{Id, ResourceType};
use crate::people::{CITIES, FAMILY, FEMALE_GIVEN, MALE_GIVEN, STREETS};
use crate::rng::{Rng, Stream};

const CLINICIANS_PER_CLINIC: usize = 6;
const CLINICIANS_PER_HOSPITAL: usize = 8;

/// A place of care: an Organization and its Location.
#[derive(Debug)]
pub(crate) struct Site {
    pub org: Id,
    pub location: Id,
    pub name: String,
    pub hospital: bool,
    pub city: usize,
    pub line: String,
    pub phone: String,
    pub npi: String,
    /// Indexes into [`Directory::clinicians`].
    pub clinicians: std::ops::Range<usize>,
}

#[derive(Debug)]
pub(crate) struct Clinician {
    pub id: Id,
    pub given: &'static str,
    pub family: &'static str,
    pub female: bool,
    pub npi: String,
    pub site: usize,
}

#[derive(Debug)]
pub(crate) struct Directory {
    pub sites: Vec<Site>,
    pub clinicians: Vec<Clinician>,
}

const CLINIC_NAMES: [&str; 4] =
    ["Family Medicine", "Community Health Center", "Primary Care Associates", "Family Practice"];
const HOSPITAL_NAMES: [&str; 3] = ["General Hospital", "Medical Center", "Regional Hospital"];

impl Directory {
    pub(crate) fn new(seed: u64) -> Directory {
        let mut rng = Rng::derive(seed, Stream::Shared, 0);
        let mut sites = Vec::with_capacity(CITIES.len() * 2);
        let mut clinicians = Vec::new();
        for (city_idx, city) in CITIES.iter().enumerate() {
            for hospital in [false, true] {
                let name = if hospital {
                    format!("{} {}", city.name, rng.pick(&HOSPITAL_NAMES))
                } else {
                    format!("{} {}", city.name, rng.pick(&CLINIC_NAMES))
                };
                let site_idx = sites.len();
                let n = if hospital { CLINICIANS_PER_HOSPITAL } else { CLINICIANS_PER_CLINIC };
                let first = clinicians.len();
                for _ in 0..n {
                    let female = rng.chance(520);
                    let given =
                        if female { *rng.pick(&FEMALE_GIVEN) } else { *rng.pick(&MALE_GIVEN) };
                    let family = *rng.pick(&FAMILY);
                    clinicians.push(Clinician {
                        id: shared_id(ResourceType::Practitioner, &mut rng),
                        given,
                        family,
                        female,
                        npi: npi(&mut rng),
                        site: site_idx,
                    });
                }
                sites.push(Site {
                    org: shared_id(ResourceType::Organization, &mut rng),
                    location: shared_id(ResourceType::Location, &mut rng),
                    name,
                    hospital,
                    city: city_idx,
                    line: format!("{} {}", rng.range(1, 2400), rng.pick(&STREETS)),
                    phone: phone(city.area, &mut rng),
                    npi: npi(&mut rng),
                    clinicians: first..clinicians.len(),
                });
            }
        }
        Directory { sites, clinicians }
    }

    pub(crate) fn clinic(&self, city: usize) -> usize {
        city * 2
    }

    pub(crate) fn hospital(&self, city: usize) -> usize {
        city * 2 + 1
    }

    /// Writes every Organization, Location and Practitioner.
    pub(crate) fn write(&self, em: &mut Emitter<'_>) {
        let ctx = em.ctx;
        for site in &self.sites {
            let city = &CITIES[site.city];
            em.write(&site.org, profile::ORGANIZATION, |o| {
                o.arr("identifier", |a| {
                    a.obj(|i| {
                        i.str("system", codes::NPI).str("value", &site.npi);
                    });
                })
                .bool("active", true)
                .arr("type", |a| {
                    a.concept(&Code {
                        system: codes::ORG_TYPE,
                        code: "prov",
                        display: "Healthcare Provider",
                    });
                })
                .str("name", &site.name)
                .arr("telecom", |a| {
                    a.obj(|t| {
                        t.str("system", "phone").str("value", &site.phone).str("use", "work");
                    });
                })
                .arr("address", |a| {
                    a.obj(|ad| {
                        address(ad, "work", &site.line, city);
                    });
                });
            });
            em.write(&site.location, profile::LOCATION, |o| {
                o.str("status", "active")
                    .str("name", &site.name)
                    .str("mode", "instance")
                    .arr("type", |a| {
                        a.concept(&if site.hospital {
                            Code { system: codes::ROLE_CODE, code: "HOSP", display: "Hospital" }
                        } else {
                            Code {
                                system: codes::ROLE_CODE,
                                code: "OF",
                                display: "Outpatient facility",
                            }
                        });
                    })
                    .arr("telecom", |a| {
                        a.obj(|t| {
                            t.str("system", "phone").str("value", &site.phone).str("use", "work");
                        });
                    })
                    .obj("address", |ad| {
                        address(ad, "work", &site.line, city);
                    })
                    .reference("managingOrganization", ctx, &site.org);
            });
        }
        for clinician in &self.clinicians {
            let site = &self.sites[clinician.site];
            let city = &CITIES[site.city];
            let email = format!(
                "{}.{}@example.com",
                ascii_lower(clinician.given),
                ascii_lower(clinician.family)
            );
            em.write(&clinician.id, profile::PRACTITIONER, |o| {
                o.arr("identifier", |a| {
                    a.obj(|i| {
                        i.str("system", codes::NPI).str("value", &clinician.npi);
                    });
                })
                .bool("active", true)
                .arr("name", |a| {
                    a.obj(|n| {
                        n.str("use", "official")
                            .str("family", clinician.family)
                            .str1("given", clinician.given)
                            .str1("prefix", "Dr.");
                    });
                })
                .arr("telecom", |a| {
                    a.obj(|t| {
                        t.str("system", "phone").str("value", &site.phone).str("use", "work");
                    })
                    .obj(|t| {
                        t.str("system", "email").str("value", &email).str("use", "work");
                    });
                })
                .arr("address", |a| {
                    a.obj(|ad| {
                        address(ad, "work", &site.line, city);
                    });
                })
                .str("gender", if clinician.female { "female" } else { "male" })
                .arr("qualification", |a| {
                    a.obj(|q| {
                        q.concept(
                            "code",
                            &Code {
                                system: codes::DEGREE,
                                code: "MD",
                                display: "Doctor of Medicine",
                            },
                        );
                    });
                });
            });
        }
    }
}

/// The members of a US postal Address.
pub(crate) fn address(
    o: &mut crate::json::Obj<'_>,
    use_: &str,
    line: &str,
    city: &crate::people::City,
) {
    o.str("use", use_)
        .str1("line", line)
        .str("city", city.name)
        .str("state", city.state)
        .str("postalCode", city.zip)
        .str("country", "US");
}

fn shared_id(ty: ResourceType, rng: &mut Rng) -> Id {
    Id { ty, uuid: rng.uuid(), shared: true }
}

/// A telephone number in the block reserved for fiction: `(617) 555-0142`.
pub(crate) fn phone(area: &str, rng: &mut Rng) -> String {
    format!("({area}) 555-01{:02}", rng.below(100))
}

/// A National Provider Identifier: nine digits starting with 1 or 2 and the Luhn check digit
/// computed with the card-issuer prefix 80840, as CMS specifies.
pub(crate) fn npi(rng: &mut Rng) -> String {
    let body = format!("{}{:08}", rng.range(1, 2), rng.below(100_000_000));
    let check = npi_check_digit(&body);
    format!("{body}{check}")
}

fn npi_check_digit(body: &str) -> u32 {
    let digits = format!("80840{body}");
    let mut sum = 0;
    // From the right, the first digit is doubled (the check digit will sit to its right).
    for (i, c) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    (10 - sum % 10) % 10
}

pub(crate) fn ascii_lower(name: &str) -> String {
    name.chars().filter(char::is_ascii_alphabetic).map(|c| c.to_ascii_lowercase()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npi_check_digits_follow_cms() {
        // CMS's worked example: 123456789 → check digit 3.
        assert_eq!(npi_check_digit("123456789"), 3);
        let mut rng = Rng::from_seed(1);
        for _ in 0..100 {
            let n = npi(&mut rng);
            assert_eq!(n.len(), 10);
            assert!(n.starts_with('1') || n.starts_with('2'));
            assert_eq!(npi_check_digit(&n[..9]), u32::from(n.as_bytes()[9] - b'0'));
        }
    }

    #[test]
    fn the_directory_depends_on_the_seed_only() {
        let a = Directory::new(5);
        let b = Directory::new(5);
        assert_eq!(a.sites.len(), CITIES.len() * 2);
        assert_eq!(a.sites[3].org.uuid, b.sites[3].org.uuid);
        assert_ne!(a.sites[3].org.uuid, Directory::new(6).sites[3].org.uuid);
        assert!(!a.sites[a.clinic(4)].hospital && a.sites[a.hospital(4)].hospital);
    }
}
