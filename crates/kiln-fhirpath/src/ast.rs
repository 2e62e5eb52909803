//! The syntax tree the parser builds and the evaluator walks. Every node keeps the byte offset
//! of its source text so evaluation errors can point at the failing sub-expression.

use crate::datetime::{Date, DateTime, Time};
use crate::quantity::Quantity;
use rust_decimal::Decimal;

/// One expression node and where it starts in the source.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub expr: Expr,
    pub offset: usize,
    /// Height of this subtree (a leaf is 1); the parser refuses trees that are too tall.
    pub depth: usize,
}

impl Node {
    pub fn new(expr: Expr, offset: usize) -> Node {
        let child = |n: &Node| n.depth;
        let opt = |n: &Option<Box<Node>>| n.as_deref().map_or(0, child);
        let depth = 1 + match &expr {
            Expr::Member { target, .. } | Expr::TypeCall { target, .. } => opt(target),
            Expr::Call { target, args, .. } => {
                args.iter().map(child).max().unwrap_or(0).max(opt(target))
            }
            Expr::Index { target, index } => child(target).max(child(index)),
            Expr::Negate(n) | Expr::Plus(n) => child(n),
            Expr::Binary { left, right, .. } => child(left).max(child(right)),
            Expr::TypeOp { operand, .. } => child(operand),
            _ => 0,
        };
        Node { expr, offset, depth }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Literal {
    Empty,
    Boolean(bool),
    String(String),
    Integer(i64),
    Decimal(Decimal),
    Date(Date),
    DateTime(DateTime),
    Time(Time),
    Quantity(Quantity),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

/// A type named in `is`, `as` or `ofType`, resolved when compiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TypeSpec {
    /// `System.X` (an unknown X never matches).
    System(String),
    /// `FHIR.X`, a type known to the definitions.
    Fhir(String),
    /// An unqualified name: the FHIR type of that name, or else the System type.
    Unqualified(String),
}

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Literal(Literal),
    /// `name` (on the focus when `target` is `None`).
    Member {
        target: Option<Box<Node>>,
        name: String,
    },
    /// `name(args)` (on the focus when `target` is `None`).
    Call {
        target: Option<Box<Node>>,
        name: String,
        args: Vec<Node>,
    },
    /// `is`/`as`/`ofType` with a resolved type argument.
    TypeCall {
        target: Option<Box<Node>>,
        name: String,
        spec: TypeSpec,
    },
    Index {
        target: Box<Node>,
        index: Box<Node>,
    },
    This,
    IndexVar,
    Total,
    /// `%name`.
    External(String),
    Negate(Box<Node>),
    /// Unary `+`: checks the operand is a number or quantity.
    Plus(Box<Node>),
    Binary {
        op: BinOp,
        left: Box<Node>,
        right: Box<Node>,
    },
    /// `expr is T` (`is_op`) or `expr as T`.
    TypeOp {
        is_op: bool,
        operand: Box<Node>,
        spec: TypeSpec,
    },
}
