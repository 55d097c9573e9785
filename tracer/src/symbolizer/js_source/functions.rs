//! Every code block JSC can compile from a JavaScript text, with the span of text its hash covers.
//!
//! Span rules, found by experiment on Bun 1.3.13 (JSC of oven-sh/WebKit): each function kind was called
//! hot enough to reach Baseline, DFG and FTL with `BUN_JSC_useJITDump=1`, and every `#hash` in the jitdump
//! was searched for among all substrings of the text JSC ran (tests/fixtures/js_source/README.md):
//!
//! | code | code blocks and the text hashed |
//! | --- | --- |
//! | function declaration or expression, method, getter, setter, class constructor | `(`params`) {`body`}`: from the parameter list's `(` to the closing `}`, whatever stands before it (`function name`, `get x`, `static`, `async`, `*`) |
//! | the same called with `new` | the same text, construct specialization (kind 1) |
//! | arrow function | from the first parameter (its `(`, or the bare name of `a => ...`) to the end of the body (its `}`, or the end of the body expression, parentheses included) |
//! | async function, generator, async generator (functions and methods) | two: the function as above, and its body from `{` to `}` |
//! | async arrow | two: the arrow as above (without `async `), and its body: the `{`..`}` block, or the body expression alone (`await a + 6`, `(await c)`) |
//! | class without a constructor | JSC's default constructor: `() { }` (base) or `(...args) { super(...args); }` (derived), construct kind: one hash for every such class, named after the class |
//! | module or script top level | the whole text |
//! | class field initializers, static blocks | no code block of their own appeared in the jitdump (for 200,000 instances of classes with fields; static blocks run once and stay in the interpreter) |
//!
//! Comments and spacing inside a span are part of it: the text must be exactly what JSC parsed.

use oxc_allocator::Allocator;
use oxc_ast::ast::{
    ArrowFunctionBody, ArrowFunctionExpression, AssignmentExpression, AssignmentTarget, BindingPattern, Class,
    ClassElement, Expression, Function, FunctionType, MethodDefinition, MethodDefinitionKind, ObjectProperty,
    PropertyDefinition, PropertyKey, PropertyKind, VariableDeclarator,
};
use oxc_ast_visit::{Visit, walk};
use oxc_parser::Parser;
use oxc_span::{GetSpan, SourceType, Span};
use oxc_syntax::scope::ScopeFlags;

use super::code_block_hash::Specialization;

/// What a code block was compiled from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteKind {
    /// A function, method, accessor, constructor or arrow.
    Function,
    /// The generator body of an async function, generator or async arrow.
    Body,
    /// The module's or script's top level.
    TopLevel,
}

/// One piece of text JSC may compile into a code block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The name JSC would most likely give it: the function's own name, else the name it is bound to (a
    /// variable, property, method or field); empty when there is none.
    pub name: String,
    pub kind: SiteKind,
    /// Byte offsets in the text of the span whose hash names the code block.
    pub hashed: Span,
    pub specializations: &'static [Specialization],
    /// Where the function is declared (its `function` keyword, method name or arrow's first parameter):
    /// the byte offset that locations report.
    pub declared_at: u32,
}

/// A class without a constructor of its own, which runs JSC's default constructor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImplicitConstructor {
    pub class_name: String,
    pub derived: bool,
    pub declared_at: u32,
}

#[derive(Debug, Default)]
pub struct Sites {
    pub sites: Vec<Site>,
    pub implicit_constructors: Vec<ImplicitConstructor>,
    /// The parser's complaints, if any (the sites found in spite of them are kept).
    pub errors: usize,
}

const CALL: &[Specialization] = &[Specialization::Call];
const CALL_AND_CONSTRUCT: &[Specialization] = &[Specialization::Call, Specialization::Construct];

/// The sites of `text`, parsed as `source_type`; the whole text is one more site, the top level.
pub fn find_sites(text: &str, source_type: SourceType) -> Sites {
    let allocator = Allocator::default();
    let parsed = Parser::new(&allocator, text, source_type).parse();
    let mut finder = Finder { sites: Sites::default(), pending: None, classes: Vec::new() };
    finder.sites.errors = parsed.diagnostics.len();
    finder.sites.sites.push(Site {
        name: String::new(),
        kind: SiteKind::TopLevel,
        hashed: Span::new(0, text.len() as u32),
        specializations: CALL,
        declared_at: 0,
    });
    finder.visit_program(&parsed.program);
    finder.sites
}

struct Finder {
    sites: Sites,
    /// The name the next function or class visited is bound to, with that node's start: set by the
    /// declarator, property, method or assignment that holds it, used only by the node that starts there.
    pending: Option<Pending>,
    /// Names of the classes being visited, innermost last (a constructor's code block bears its class's).
    classes: Vec<String>,
}

struct Pending {
    start: u32,
    name: String,
    declared_at: u32,
    role: Role,
}

/// How a function can be entered, which decides its specializations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A function declaration or expression: callable and constructible.
    Plain,
    /// An object or class method, getter or setter: callable only.
    Method,
    Constructor,
}

impl Finder {
    /// The binding name for the node starting at `start`, if its holder set one.
    fn take_pending(&mut self, start: u32) -> Option<Pending> {
        self.pending.take().filter(|pending| pending.start == start)
    }

    /// Remembers `name` for `value` when it is a function, arrow or class (seen through parentheses).
    fn name_value(&mut self, value: &Expression<'_>, name: String, declared_at: u32) {
        let value = value.without_parentheses();
        if matches!(
            value,
            Expression::FunctionExpression(_) | Expression::ArrowFunctionExpression(_) | Expression::ClassExpression(_)
        ) {
            self.pending = Some(Pending { start: value.span().start, name, declared_at, role: Role::Plain });
        }
    }

    fn function(&mut self, function: &Function<'_>, pending: Option<Pending>) {
        let Some(body) = &function.body else { return };
        if matches!(function.r#type, FunctionType::TSDeclareFunction | FunctionType::TSEmptyBodyFunctionExpression) {
            return;
        }
        let role = pending.as_ref().map_or(Role::Plain, |pending| pending.role);
        let (name, declared_at) = match (&function.id, pending) {
            (Some(id), Some(pending)) => (id.name.to_string(), pending.declared_at),
            (Some(id), None) => (id.name.to_string(), function.span.start),
            (None, Some(pending)) => (pending.name, pending.declared_at),
            (None, None) => (String::new(), function.span.start),
        };
        let resumable = function.r#async || function.generator;
        let constructible = role == Role::Constructor || (role == Role::Plain && !resumable);
        self.sites.sites.push(Site {
            name: name.clone(),
            kind: SiteKind::Function,
            hashed: Span::new(function.params.span.start, body.span.end),
            specializations: if constructible { CALL_AND_CONSTRUCT } else { CALL },
            declared_at,
        });
        if resumable {
            self.sites.sites.push(Site {
                name,
                kind: SiteKind::Body,
                hashed: body.span,
                specializations: CALL,
                declared_at,
            });
        }
    }
}

fn key_name(key: &PropertyKey<'_>) -> Option<String> {
    match key {
        PropertyKey::StaticIdentifier(id) => Some(id.name.to_string()),
        PropertyKey::PrivateIdentifier(id) => Some(format!("#{}", id.name)),
        PropertyKey::StringLiteral(s) => Some(s.value.to_string()),
        PropertyKey::NumericLiteral(n) => Some(n.value.to_string()),
        _ => None,
    }
}

impl<'a> Visit<'a> for Finder {
    fn visit_variable_declarator(&mut self, it: &VariableDeclarator<'a>) {
        if let (BindingPattern::BindingIdentifier(id), Some(init)) = (&it.id, &it.init) {
            self.name_value(init, id.name.to_string(), init.without_parentheses().span().start);
        }
        walk::walk_variable_declarator(self, it);
    }

    fn visit_assignment_expression(&mut self, it: &AssignmentExpression<'a>) {
        let name = match &it.left {
            AssignmentTarget::AssignmentTargetIdentifier(id) => Some(id.name.to_string()),
            AssignmentTarget::StaticMemberExpression(member) => Some(member.property.name.to_string()),
            _ => None,
        };
        if let Some(name) = name {
            self.name_value(&it.right, name, it.right.without_parentheses().span().start);
        }
        walk::walk_assignment_expression(self, it);
    }

    fn visit_object_property(&mut self, it: &ObjectProperty<'a>) {
        let name = key_name(&it.key).filter(|_| !it.computed);
        if it.method || it.kind != PropertyKind::Init {
            let start = it.value.span().start;
            let name = name.unwrap_or_default();
            self.pending = Some(Pending { start, name, declared_at: it.key.span().start, role: Role::Method });
        } else if let Some(name) = name {
            self.name_value(&it.value, name, it.key.span().start);
        }
        walk::walk_object_property(self, it);
    }

    fn visit_property_definition(&mut self, it: &PropertyDefinition<'a>) {
        // JSC leaves a class field's function unnamed (`field = () => ...` prints as `#hash`), but the field's
        // name still tells two identical texts apart no worse than nothing.
        if let (Some(name), Some(value)) = (key_name(&it.key).filter(|_| !it.computed), &it.value) {
            self.name_value(value, name, it.key.span().start);
        }
        walk::walk_property_definition(self, it);
    }

    fn visit_method_definition(&mut self, it: &MethodDefinition<'a>) {
        let (name, role) = if it.kind == MethodDefinitionKind::Constructor {
            (self.classes.last().cloned().unwrap_or_default(), Role::Constructor)
        } else {
            (key_name(&it.key).filter(|_| !it.computed).unwrap_or_default(), Role::Method)
        };
        self.pending = Some(Pending { start: it.value.span.start, name, declared_at: it.key.span().start, role });
        walk::walk_method_definition(self, it);
    }

    fn visit_function(&mut self, it: &Function<'a>, flags: ScopeFlags) {
        let pending = self.take_pending(it.span.start);
        self.function(it, pending);
        walk::walk_function(self, it, flags);
    }

    fn visit_arrow_function_expression(&mut self, it: &ArrowFunctionExpression<'a>) {
        let (name, declared_at) = self
            .take_pending(it.span.start)
            .map_or((String::new(), it.span.start), |pending| (pending.name, pending.declared_at));
        let declared_at = declared_at.min(it.params.span.start);
        self.sites.sites.push(Site {
            name: name.clone(),
            kind: SiteKind::Function,
            hashed: Span::new(it.params.span.start, it.span.end),
            specializations: CALL,
            declared_at,
        });
        if it.r#async {
            let body = match &it.body {
                ArrowFunctionBody::FunctionBody(body) => body.span,
                expression => expression.span(),
            };
            self.sites.sites.push(Site {
                name,
                kind: SiteKind::Body,
                hashed: body,
                specializations: CALL,
                declared_at,
            });
        }
        walk::walk_arrow_function_expression(self, it);
    }

    fn visit_class(&mut self, it: &Class<'a>) {
        let bound = self.take_pending(it.span.start);
        let name = match (&it.id, bound) {
            (Some(id), _) => id.name.to_string(),
            (None, Some(pending)) => pending.name,
            (None, None) => String::new(),
        };
        let has_constructor = it.body.body.iter().any(|element| {
            matches!(element, ClassElement::MethodDefinition(method) if method.kind == MethodDefinitionKind::Constructor)
        });
        if !has_constructor {
            self.sites.implicit_constructors.push(ImplicitConstructor {
                class_name: name.clone(),
                derived: it.heritage.is_some(),
                declared_at: it.span.start,
            });
        }
        self.classes.push(name);
        walk::walk_class(self, it);
        self.classes.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(source: &str) -> Vec<(String, SiteKind, String, usize)> {
        find_sites(source, SourceType::mjs())
            .sites
            .into_iter()
            .filter(|site| site.kind != SiteKind::TopLevel)
            .map(|site| {
                (
                    site.name,
                    site.kind,
                    source[site.hashed.start as usize..site.hashed.end as usize].to_string(),
                    site.specializations.len(),
                )
            })
            .collect()
    }

    #[test]
    fn spans_follow_the_rules_seen_on_bun() {
        let source = "function f(a) /* c */ { return a; }\n\
                      const g = a => a + 1, h = async (b) => { await b; }, k = async c => (await c);\n\
                      const o = { m(a) { return 1; }, get v() { return 2; }, async *ag(n) { yield n; } };\n\
                      class C extends B { static s() {} constructor(x) { super(x); } #p() {} field = () => 3; }\n\
                      class D {}\n\
                      obj.prop = function () {};\n";
        let found = texts(source);
        let expected: Vec<(&str, SiteKind, &str, usize)> = vec![
            ("f", SiteKind::Function, "(a) /* c */ { return a; }", 2),
            ("g", SiteKind::Function, "a => a + 1", 1),
            ("h", SiteKind::Function, "(b) => { await b; }", 1),
            ("h", SiteKind::Body, "{ await b; }", 1),
            ("k", SiteKind::Function, "c => (await c)", 1),
            ("k", SiteKind::Body, "(await c)", 1),
            ("m", SiteKind::Function, "(a) { return 1; }", 1),
            ("v", SiteKind::Function, "() { return 2; }", 1),
            ("ag", SiteKind::Function, "(n) { yield n; }", 1),
            ("ag", SiteKind::Body, "{ yield n; }", 1),
            ("s", SiteKind::Function, "() {}", 1),
            ("C", SiteKind::Function, "(x) { super(x); }", 2),
            ("#p", SiteKind::Function, "() {}", 1),
            ("field", SiteKind::Function, "() => 3", 1),
            ("prop", SiteKind::Function, "() {}", 2),
        ];
        let found: Vec<(&str, SiteKind, &str, usize)> =
            found.iter().map(|(name, kind, text, n)| (name.as_str(), *kind, text.as_str(), *n)).collect();
        assert_eq!(found, expected);
        let implicit = find_sites(source, SourceType::mjs()).implicit_constructors;
        assert_eq!(implicit.len(), 1);
        assert_eq!((implicit[0].class_name.as_str(), implicit[0].derived), ("D", false));
    }
}
