//! Demographic tables: names, places, languages and the OMB race and ethnicity categories.
//!
//! Names are common US given names and surnames; street names are generic. Postal codes are
//! real codes of the cities named; telephone numbers use the 555-01xx block that North
//! American numbering reserves for fiction, and e-mail addresses the reserved `example.com`.

use crate::codes::Code;
use crate::codes::OMB;

/// A city: state, a postal code, telephone area code and the standard-time UTC offset in
/// minutes (daylight saving is ignored: the offset only places times of day).
#[derive(Debug)]
pub(crate) struct City {
    pub name: &'static str,
    pub state: &'static str,
    pub zip: &'static str,
    pub area: &'static str,
    pub utc_offset: i32,
    /// Relative population weight.
    pub weight: u32,
}

const fn city(
    name: &'static str,
    state: &'static str,
    zip: &'static str,
    area: &'static str,
    utc_offset: i32,
    weight: u32,
) -> City {
    City { name, state, zip, area, utc_offset, weight }
}

pub(crate) const CITIES: [City; 24] = [
    city("Boston", "MA", "02118", "617", -300, 7),
    city("Worcester", "MA", "01608", "508", -300, 3),
    city("Springfield", "MA", "01103", "413", -300, 2),
    city("Providence", "RI", "02903", "401", -300, 2),
    city("Hartford", "CT", "06103", "860", -300, 2),
    city("New York", "NY", "10027", "212", -300, 10),
    city("Buffalo", "NY", "14201", "716", -300, 3),
    city("Philadelphia", "PA", "19104", "215", -300, 6),
    city("Pittsburgh", "PA", "15213", "412", -300, 3),
    city("Baltimore", "MD", "21201", "410", -300, 3),
    city("Richmond", "VA", "23219", "804", -300, 2),
    city("Atlanta", "GA", "30303", "404", -300, 5),
    city("Miami", "FL", "33130", "305", -300, 5),
    city("Cleveland", "OH", "44113", "216", -300, 3),
    city("Detroit", "MI", "48201", "313", -300, 4),
    city("Chicago", "IL", "60616", "312", -360, 8),
    city("Minneapolis", "MN", "55404", "612", -360, 3),
    city("St. Louis", "MO", "63103", "314", -360, 3),
    city("Houston", "TX", "77004", "713", -360, 7),
    city("San Antonio", "TX", "78205", "210", -360, 4),
    city("Denver", "CO", "80205", "303", -420, 4),
    city("Phoenix", "AZ", "85004", "602", -420, 5),
    city("Los Angeles", "CA", "90012", "213", -480, 9),
    city("Seattle", "WA", "98104", "206", -480, 4),
];

pub(crate) const STREETS: [&str; 32] = [
    "Maple Street",
    "Oak Avenue",
    "Cedar Lane",
    "Elm Street",
    "Pine Road",
    "Washington Street",
    "Lincoln Avenue",
    "Park Place",
    "Highland Avenue",
    "Church Street",
    "Mill Road",
    "Spring Street",
    "Lake Drive",
    "Hillside Avenue",
    "River Road",
    "Chestnut Street",
    "Walnut Street",
    "Sunset Boulevard",
    "Franklin Street",
    "Jefferson Avenue",
    "Main Street",
    "Willow Way",
    "Prospect Street",
    "Forest Avenue",
    "Meadow Lane",
    "Bridge Street",
    "Orchard Road",
    "Summit Avenue",
    "Union Street",
    "Harbor View Drive",
    "Water Street",
    "College Avenue",
];

pub(crate) const MALE_GIVEN: [&str; 40] = [
    "James",
    "Robert",
    "John",
    "Michael",
    "David",
    "William",
    "Richard",
    "Joseph",
    "Thomas",
    "Charles",
    "Christopher",
    "Daniel",
    "Matthew",
    "Anthony",
    "Mark",
    "Donald",
    "Steven",
    "Andrew",
    "Paul",
    "Joshua",
    "Kenneth",
    "Kevin",
    "Brian",
    "George",
    "Timothy",
    "Ronald",
    "Jason",
    "Edward",
    "Jeffrey",
    "Ryan",
    "Jacob",
    "Gary",
    "Nicholas",
    "Eric",
    "Jonathan",
    "Stephen",
    "Larry",
    "Justin",
    "Scott",
    "Benjamin",
];

pub(crate) const FEMALE_GIVEN: [&str; 40] = [
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Lisa",
    "Nancy",
    "Betty",
    "Sandra",
    "Margaret",
    "Ashley",
    "Kimberly",
    "Emily",
    "Donna",
    "Michelle",
    "Carol",
    "Amanda",
    "Melissa",
    "Deborah",
    "Stephanie",
    "Dorothy",
    "Rebecca",
    "Sharon",
    "Laura",
    "Cynthia",
    "Amy",
    "Kathleen",
    "Angela",
    "Helen",
    "Anna",
    "Brenda",
    "Emma",
    "Olivia",
    "Nicole",
    "Samantha",
];

pub(crate) const HISPANIC_MALE_GIVEN: [&str; 12] = [
    "José",
    "Luis",
    "Carlos",
    "Juan",
    "Jorge",
    "Miguel",
    "Alejandro",
    "Diego",
    "Javier",
    "Mateo",
    "Santiago",
    "Ricardo",
];

pub(crate) const HISPANIC_FEMALE_GIVEN: [&str; 12] = [
    "María",
    "Guadalupe",
    "Sofía",
    "Isabella",
    "Valentina",
    "Camila",
    "Lucía",
    "Gabriela",
    "Ana",
    "Rosa",
    "Carmen",
    "Elena",
];

pub(crate) const FAMILY: [&str; 60] = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Miller",
    "Davis",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Thompson",
    "White",
    "Harris",
    "Clark",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Hill",
    "Green",
    "Adams",
    "Baker",
    "Nelson",
    "Carter",
    "Mitchell",
    "Roberts",
    "Turner",
    "Phillips",
    "Campbell",
    "Parker",
    "Evans",
    "Edwards",
    "Collins",
    "Stewart",
    "Morris",
    "Murphy",
    "Cook",
    "Rogers",
    "Morgan",
    "Cooper",
    "Peterson",
    "Bailey",
    "Reed",
    "Kelly",
    "Howard",
    "Cox",
    "Ward",
    "Richardson",
    "Watson",
    "Brooks",
    "O'Brien",
];

pub(crate) const HISPANIC_FAMILY: [&str; 16] = [
    "García",
    "Rodríguez",
    "Martínez",
    "Hernández",
    "López",
    "González",
    "Pérez",
    "Sánchez",
    "Ramírez",
    "Torres",
    "Flores",
    "Rivera",
    "Gómez",
    "Díaz",
    "Morales",
    "Reyes",
];

pub(crate) const ASIAN_FAMILY: [&str; 12] = [
    "Nguyen", "Chen", "Wang", "Kim", "Li", "Park", "Tran", "Patel", "Singh", "Wong", "Liu", "Zhang",
];

/// OMB race categories with relative weights (roughly the US census mix).
pub(crate) const RACES: [(Code, u32); 5] = [
    (Code { system: OMB, code: "2106-3", display: "White" }, 700),
    (Code { system: OMB, code: "2054-5", display: "Black or African American" }, 130),
    (Code { system: OMB, code: "2028-9", display: "Asian" }, 60),
    (Code { system: OMB, code: "1002-5", display: "American Indian or Alaska Native" }, 10),
    (Code { system: OMB, code: "2076-8", display: "Native Hawaiian or Other Pacific Islander" }, 3),
];
pub(crate) const ASIAN: usize = 2;

pub(crate) const HISPANIC: Code =
    Code { system: OMB, code: "2135-2", display: "Hispanic or Latino" };
pub(crate) const NOT_HISPANIC: Code =
    Code { system: OMB, code: "2186-5", display: "Not Hispanic or Latino" };

/// Preferred languages (BCP 47).
pub(crate) const ENGLISH: Code =
    Code { system: crate::codes::BCP47, code: "en", display: "English" };
pub(crate) const SPANISH: Code =
    Code { system: crate::codes::BCP47, code: "es", display: "Spanish" };
pub(crate) const ASIAN_LANGUAGES: [Code; 3] = [
    Code { system: crate::codes::BCP47, code: "zh", display: "Chinese" },
    Code { system: crate::codes::BCP47, code: "vi", display: "Vietnamese" },
    Code { system: crate::codes::BCP47, code: "ko", display: "Korean" },
];

/// Share of the population in each five-year age band, 0–4 to 90–94 (per mille).
pub(crate) const AGE_BANDS: [u32; 19] =
    [58, 60, 64, 64, 66, 70, 70, 66, 62, 60, 64, 64, 62, 52, 40, 28, 18, 12, 8];
