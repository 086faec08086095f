//! The decision procedure: which statements apply to a request, and how the
//! key policy, a grant and identity policies combine into one [`Decision`].

use super::document::{Effect, PatternSet, Principal, Statement};
use super::wildcard::{wildcard_match, wildcard_match_ignore_ascii_case};
use super::{AllowedBy, Decision, DenyReason, Evaluation, Request};

/// How a statement's `Principal` is read, which depends on what we are
/// looking for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// An identity policy Allow: it applies to whoever it is attached to.
    Identity,
    /// A key-policy Allow that grants access by itself.
    KeyDirect,
    /// A key-policy Allow that lets identity policies decide.
    KeyDelegation,
    /// Any Deny: it is read as broadly as possible.
    Deny,
}

pub(super) fn decide(request: &Request<'_>, policies: &Evaluation<'_>) -> Decision {
    let key_statements: &[Statement] = policies
        .key_policy
        .map_or(&[], |doc| doc.statements.as_slice());
    let key_matches = |effect: Effect, scope: Scope| -> Vec<String> {
        key_statements
            .iter()
            .filter(|s| s.effect == effect && applies(s, request, scope))
            .map(|s| format!("key-policy:{}", s.label))
            .collect()
    };
    let identity_matches = |effect: Effect, scope: Scope| -> Vec<String> {
        policies
            .identity_policies
            .iter()
            .flat_map(|(name, doc)| {
                doc.statements
                    .iter()
                    .filter(move |s| s.effect == effect && applies(s, request, scope))
                    .map(move |s| format!("identity:{name}:{}", s.label))
            })
            .collect()
    };

    // Every Deny is collected before any Allow is looked at, so neither
    // statement order nor policy order can let an Allow win.
    let mut denied = key_matches(Effect::Deny, Scope::Deny);
    denied.extend(identity_matches(Effect::Deny, Scope::Deny));
    if !denied.is_empty() {
        return Decision::ExplicitDeny { matched: denied };
    }

    let direct = key_matches(Effect::Allow, Scope::KeyDirect);
    if !direct.is_empty() {
        return Decision::Allow {
            via: AllowedBy::KeyPolicy,
            matched: direct,
        };
    }

    if let Some(grant) = policies.grant {
        return Decision::Allow {
            via: AllowedBy::Grant,
            matched: vec![format!("grant:{grant}")],
        };
    }

    let identity = identity_matches(Effect::Allow, Scope::Identity);
    if identity.is_empty() {
        return Decision::ImplicitDeny {
            reason: DenyReason::NoIdentityPolicyAllows,
        };
    }
    if policies.key_policy.is_none() {
        return Decision::Allow {
            via: AllowedBy::IdentityPolicy,
            matched: identity,
        };
    }
    // For keys, identity policies count only when the key policy says so;
    // otherwise a key owner could not lock out account administrators.
    let mut delegating = key_matches(Effect::Allow, Scope::KeyDelegation);
    if delegating.is_empty() {
        return Decision::ImplicitDeny {
            reason: DenyReason::NoKeyPolicyAllows,
        };
    }
    delegating.extend(identity);
    Decision::Allow {
        via: AllowedBy::IdentityPolicy,
        matched: delegating,
    }
}

fn applies(statement: &Statement, request: &Request<'_>, scope: Scope) -> bool {
    principal_applies(statement.principals.as_deref(), request.principal, scope)
        && set_matches(
            &statement.actions,
            request.action,
            wildcard_match_ignore_ascii_case,
        )
        && set_matches(&statement.resources, request.resource, wildcard_match)
        && statement
            .conditions
            .iter()
            .all(|c| c.matches(request, statement.effect))
}

fn set_matches(set: &PatternSet, value: &str, matcher: fn(&str, &str) -> bool) -> bool {
    set.patterns.iter().any(|p| matcher(p, value)) != set.negated
}

fn principal_applies(principals: Option<&[Principal]>, caller: &str, scope: Scope) -> bool {
    let names_caller = |p: &Principal| match p {
        Principal::Any => true,
        Principal::Named(name) => name == caller,
        Principal::Account => false,
    };
    match (principals, scope) {
        (None, Scope::Identity | Scope::Deny) => true,
        // Only reachable when an identity policy is passed as a key policy;
        // failing closed keeps that mistake from granting anything.
        (None, Scope::KeyDirect | Scope::KeyDelegation) => false,
        (Some(list), Scope::Identity | Scope::KeyDirect) => list.iter().any(names_caller),
        (Some(list), Scope::KeyDelegation) => list.contains(&Principal::Account),
        // Every caller belongs to the account, so an `account` Deny covers
        // them all, as AWS applies a Deny on the account root to all of it.
        (Some(list), Scope::Deny) => list
            .iter()
            .any(|p| *p == Principal::Account || names_caller(p)),
    }
}
