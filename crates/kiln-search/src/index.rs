//! Index rows: what [`crate::extract`] produces for one resource, one value per row. The types are
//! plain data (strings, `i64` milliseconds, `f64`) so that any backend can store them as columns.

/// The search-parameter type an index value belongs to (`SearchParameter.type`, without
/// `composite` and `special`: a composite parameter is indexed as its components).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamKind {
    /// Codes, identifiers, booleans.
    Token,
    /// Names, addresses, free text.
    String,
    /// Dates and periods as millisecond ranges.
    Date,
    /// Decimals and integers as ranges.
    Number,
    /// Quantities as value ranges plus units.
    Quantity,
    /// Links to other resources (local, absolute, canonical, logical).
    Reference,
    /// URIs.
    Uri,
}

/// One index row: parameter `code` of the resource has `value`.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The search parameter's code (`birthdate`, `component-code-value-quantity`).
    pub code: String,
    /// For a composite parameter: the position of the component in
    /// `SearchParameter.component` (0, 1, …); `None` for an ordinary parameter.
    pub component: Option<u8>,
    /// The occurrence the value came from: the index of the item in the parameter's
    /// expression result. Values of one CodeableConcept share it; so do the components of
    /// one composite occurrence, which is what lets a backend join them on `(resource, elem)`.
    pub elem: u32,
    /// The normalised value.
    pub value: IndexValue,
    /// `None` for a value of the resource itself; for a value of one of its `contained`
    /// resources, which one (see [`ContainedIn`]). Contained values never mix with the
    /// container's own: a store keeps them apart and only `_contained` searches and chains
    /// through local `#id` references look at them.
    pub contained: Option<ContainedIn>,
}

/// Which contained resource an [`IndexEntry`] belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainedIn {
    /// Its position in the container's `contained` array, counted from 1 (0 never occurs:
    /// stores use it for the container's own rows).
    pub index: u32,
    /// Its `resourceType`: its values are those of this type's search parameters.
    pub resource_type: String,
}

impl IndexEntry {
    /// The type of the value.
    pub fn kind(&self) -> ParamKind {
        self.value.kind()
    }
}

/// A normalised value, by search-parameter type.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// A code with its system (Coding, Identifier, code, boolean, ContactPoint, id, uri…).
    Token(Token),
    /// An `Identifier.type` coding paired with the identifier's value, for `:of-type`.
    OfType(OfType),
    /// A string (a name part, an address part, a plain string).
    String(StringValue),
    /// A date or period.
    Date(DateRange),
    /// A decimal or integer with its implicit precision.
    Number(NumberRange),
    /// A quantity with its unit.
    Quantity(QuantityValue),
    /// A reference to another resource.
    Reference(RefValue),
    /// A URI (`_profile`, `url`, `_source`…).
    Uri(String),
}

impl IndexValue {
    /// The search-parameter type of this value.
    pub fn kind(&self) -> ParamKind {
        match self {
            IndexValue::Token(_) | IndexValue::OfType(_) => ParamKind::Token,
            IndexValue::String(_) => ParamKind::String,
            IndexValue::Date(_) => ParamKind::Date,
            IndexValue::Number(_) => ParamKind::Number,
            IndexValue::Quantity(_) => ParamKind::Quantity,
            IndexValue::Reference(_) => ParamKind::Reference,
            IndexValue::Uri(_) => ParamKind::Uri,
        }
    }
}

/// A token. At least one field is set. Matching on `system` and `code` is exact
/// (case-sensitive); `text` is compared after [`crate::normalize_string`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Token {
    /// `Coding.system`, `Identifier.system`, `ContactPoint.system`; `None` when absent (and
    /// for plain `code`/`boolean`/`string` elements, whose system the resource does not say).
    pub system: Option<String>,
    /// `Coding.code`, `Identifier.value`, `ContactPoint.value`, the primitive's text,
    /// `true`/`false`. `None` for a text-only row (a CodeableConcept's `text`).
    pub code: Option<String>,
    /// Already normalised text for `:text`: `Coding.display`, `CodeableConcept.text`,
    /// `Identifier.type.text`.
    pub text: Option<String>,
}

/// One coding of `Identifier.type` with the identifier's value (`:of-type` searches
/// `system|code|value`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OfType {
    /// `Identifier.type.coding.system`.
    pub system: Option<String>,
    /// `Identifier.type.coding.code`.
    pub code: Option<String>,
    /// `Identifier.value`.
    pub value: String,
}

/// A string as written and in its normalised search form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StringValue {
    /// The text as written (for `:exact`).
    pub exact: String,
    /// [`crate::normalize_string`] of `exact` (for the default starts-with and `:contains`).
    pub normalized: String,
}

/// A closed range of instants, in UTC epoch milliseconds: `[lo, hi]`, both included.
/// A value's precision gives the range (`2020-03` → March 1st 00:00:00.000 to March 31st
/// 23:59:59.999). An open Period end is `i64::MIN` / `i64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateRange {
    /// First millisecond of the range.
    pub lo: i64,
    /// Last millisecond of the range (included).
    pub hi: i64,
}

/// A number as two closed intervals: its implicit precision `[lo, hi]` (`100` → `[99.5,
/// 100.5]`, `1.50` → `[1.495, 1.505]`), used by `eq`, `ne` and `ap`; and its exact extent
/// `[min, max]` (`100` → `[100, 100]`), used by `gt`, `lt`, `ge`, `le`, `sa`, `eb` and for
/// sorting. A Range value has `lo`/`min` from its low end and `hi`/`max` from its high end
/// (an absent end is infinite).
#[derive(Debug, Clone, PartialEq)]
pub struct NumberRange {
    /// Lower bound of the implicit-precision range.
    pub lo: f64,
    /// Upper bound of the implicit-precision range.
    pub hi: f64,
    /// Smallest exact value.
    pub min: f64,
    /// Largest exact value.
    pub max: f64,
    /// The number as written (`1.50`; a Range as `low..high`).
    pub text: String,
}

/// A Quantity-like value (Quantity, Age, Duration, Money, SimpleQuantity, Range).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantityValue {
    /// The value with its implicit precision. A Range gives `[low, high]` (an open end is
    /// infinite).
    pub number: NumberRange,
    /// `Quantity.system` (Money: `urn:iso:std:iso:4217`).
    pub system: Option<String>,
    /// `Quantity.code` (Money: the currency).
    pub code: Option<String>,
    /// `Quantity.unit`, the human-readable unit.
    pub unit: Option<String>,
}

/// What a reference points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RefValue {
    /// A resource by type and id: `Patient/1`, `Patient/1/_history/2` (version ignored), and
    /// absolute URLs ending in `Type/id` (whatever their base: Kiln does not know its own
    /// base URL at this layer, so `http://a/Patient/1` and `Patient/1` index the same).
    Local {
        /// The target resource type.
        target_type: String,
        /// The target id.
        id: String,
    },
    /// An absolute URL or URN that is not of the `…/Type/id` form, and every value of a
    /// `canonical`/`uri` element, which names a resource by its canonical URL
    /// (`http://x/ValueSet/y|1.0` → url `http://x/ValueSet/y`, version `1.0`).
    Url {
        /// The URL without its `|version`.
        url: String,
        /// The canonical version after `|`, if any.
        version: Option<String>,
    },
    /// A local reference to a contained resource of the same container, `#id`. Only chains
    /// follow it (into the container's contained resource with that id); no reference
    /// search value matches it.
    Contained {
        /// The reference as written (trimmed): `#` and the contained resource's id.
        reference: String,
    },
    /// `Reference.identifier` (for `:identifier`).
    Identifier {
        /// `Identifier.system`.
        system: Option<String>,
        /// `Identifier.value`.
        value: Option<String>,
    },
}
