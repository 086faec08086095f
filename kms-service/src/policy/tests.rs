//! Table-driven tests: the wildcard matcher, parse acceptance and rejection,
//! every condition operator, and the decision procedure end to end.

use std::time::{Duration, Instant};

use super::*;
use PolicyKind::{Identity, Key};

// ---------------------------------------------------------------- helpers

type Context<'a> = &'a [(&'a str, &'a [&'a str])];

fn context_from(entries: Context<'_>) -> ConditionContext {
    let mut context = ConditionContext::new();
    for &(key, values) in entries {
        match values {
            [single] => context.set(key, *single),
            many => context.set_multi(key, many.iter().map(|v| v.to_string()).collect()),
        }
    }
    context
}

fn parse_or_panic(case: &str, json: &str, kind: PolicyKind) -> PolicyDocument {
    PolicyDocument::parse(json, kind)
        .unwrap_or_else(|e| panic!("case {case:?}: {kind:?} policy failed to parse: {e}"))
}

fn managed(name: &str) -> &'static str {
    managed_policies()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, json)| *json)
        .unwrap_or_else(|| panic!("no managed policy {name:?}"))
}

// --------------------------------------------------------------- wildcard

fn check_wildcard(matcher: fn(&str, &str) -> bool, cases: &[(&str, &str, bool)]) {
    for &(pattern, text, expected) in cases {
        assert_eq!(
            matcher(pattern, text),
            expected,
            "pattern {pattern:?} against {text:?}"
        );
    }
}

#[test]
fn wildcard_case_sensitive() {
    check_wildcard(
        wildcard_match,
        &[
            ("", "", true),
            ("", "a", false),
            ("a", "", false),
            ("*", "", true),
            ("*", "anything at all", true),
            ("**", "x", true),
            ("?", "", false),
            ("?", "a", true),
            ("?", "ab", false),
            ("*?", "", false),
            ("kms:*", "kms:Decrypt", true),
            ("kms:*", "kms:", true),
            ("kms:*", "table:GetItem", false),
            ("kms:Generate?ataKey", "kms:GenerateDataKey", true),
            ("kms:Generate?ataKey", "kms:GenerateDataKeyPair", false),
            ("kms:ReEncrypt*", "kms:ReEncryptFrom", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*c", "abcabc", true),
            ("*c*", "abab", false),
            ("a*a*a*a*a*b", "aaaaaaaaaa", false),
            ("key/*", "key/", true),
            ("key/?", "key/é", true),
            ("key/??", "key/é", false),
            ("KMS:*", "kms:Decrypt", false),
            ("table/Orders", "table/orders", false),
        ],
    );
}

#[test]
fn wildcard_ignore_ascii_case() {
    check_wildcard(
        wildcard_match_ignore_ascii_case,
        &[
            ("KMS:decrypt", "kms:Decrypt", true),
            ("kms:generate?atakey", "KMS:GENERATEDATAKEY", true),
            ("kms:re*", "kms:ReEncryptTo", true),
            ("kms:Decrypt", "kms:Encrypt", false),
            ("Ä", "ä", false),
        ],
    );
}

#[test]
fn wildcard_pathological_patterns_finish_quickly() {
    let text = "a".repeat(100_000);
    let started = Instant::now();
    check_wildcard(
        wildcard_match,
        &[
            ("a*a*a*a*a*a*a*a*a*a*b", text.as_str(), false),
            ("*a*a*a*a*a*a*a*a*a*a", text.as_str(), true),
            ("*?*?*?*?*?*?*b", text.as_str(), false),
        ],
    );
    // Exponential backtracking would take years here; the bound is loose
    // so that a slow, loaded machine does not make the test flaky.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

// ------------------------------------------------------------------ parse

fn check_rejected(cases: &[(&str, PolicyKind, &str, &[&str])]) {
    for &(name, kind, json, needles) in cases {
        match PolicyDocument::parse(json, kind) {
            Ok(doc) => panic!("case {name:?}: expected a rejection, parsed {doc:?}"),
            Err(error) => {
                let message = error.to_string();
                for needle in needles {
                    assert!(
                        message.contains(needle),
                        "case {name:?}: message {message:?} does not contain {needle:?}"
                    );
                }
            }
        }
    }
}

fn check_accepted(cases: &[(&str, PolicyKind, &str, usize)]) {
    for &(name, kind, json, statements) in cases {
        let doc = parse_or_panic(name, json, kind);
        assert_eq!(doc.statement_count(), statements, "case {name:?}");
        assert_eq!(doc.kind(), kind, "case {name:?}");
    }
}

#[test]
fn parse_rejects_documents() {
    check_rejected(&[
        (
            "invalid JSON",
            Identity,
            r#"{"Version": "2012-10-17", "Statement": ["#,
            &["policy is not valid JSON"],
        ),
        (
            "trailing garbage",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}} x"#,
            &["policy is not valid JSON"],
        ),
        (
            "not an object",
            Identity,
            "[]",
            &["must be a JSON object", "found an array"],
        ),
        (
            "missing Version",
            Identity,
            r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}"#,
            &["missing \"Version\"", "add \"Version\": \"2012-10-17\""],
        ),
        (
            "wrong Version",
            Identity,
            r#"{"Version":"2008-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}"#,
            &["\"2008-10-17\"", "use \"Version\": \"2012-10-17\""],
        ),
        (
            "Version not a string",
            Identity,
            r#"{"Version":2012,"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}"#,
            &[
                "\"Version\" must be the string \"2012-10-17\"",
                "found a number",
            ],
        ),
        (
            "unknown top-level field",
            Identity,
            r#"{"Version":"2012-10-17","Statements":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
            &[
                "policy document: unknown field \"Statements\"",
                "Version, Id and Statement",
            ],
        ),
        (
            "Id not a string",
            Identity,
            r#"{"Version":"2012-10-17","Id":7,"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}"#,
            &["\"Id\" must be a string", "found a number"],
        ),
        (
            "missing Statement",
            Identity,
            r#"{"Version":"2012-10-17"}"#,
            &["missing \"Statement\""],
        ),
        (
            "empty Statement array",
            Identity,
            r#"{"Version":"2012-10-17","Statement":[]}"#,
            &["\"Statement\" is empty", "add at least one statement"],
        ),
        (
            "statement not an object",
            Identity,
            r#"{"Version":"2012-10-17","Statement":["Allow"]}"#,
            &["\"Statement[0]\" must be an object", "found a string"],
        ),
        (
            "unknown statement field",
            Identity,
            r#"{"Version":"2012-10-17","Statement":[{"Sid":"A","Effect":"Allow","Actions":"kms:*","Resource":"*"}]}"#,
            &[
                "Statement[0] (Sid \"A\"): unknown field \"Actions\"",
                "Action, NotAction",
            ],
        ),
        (
            "unknown field in a later statement without Sid",
            Identity,
            r#"{"Version":"2012-10-17","Statement":[
                {"Effect":"Allow","Action":"*","Resource":"*"},
                {"Effect":"Allow","Action":"*","Resource":"*","Condtion":{}}]}"#,
            &["Statement[1]: unknown field \"Condtion\""],
        ),
        (
            "bad Effect",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"allow","Action":"*","Resource":"*"}}"#,
            &[
                "Statement[0]: \"Effect\" must be \"Allow\" or \"Deny\"",
                "found \"allow\"",
            ],
        ),
        (
            "Effect not a string",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":true,"Action":"*","Resource":"*"}}"#,
            &[
                "\"Effect\" must be \"Allow\" or \"Deny\"",
                "found a boolean",
            ],
        ),
        (
            "missing Effect",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Action":"*","Resource":"*"}}"#,
            &["missing \"Effect\""],
        ),
        (
            "duplicate JSON key cannot override Effect",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*","Resource":"*","Effect":"Allow"}}"#,
            &["duplicate key \"Effect\""],
        ),
        (
            "both Action and NotAction",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"kms:*","NotAction":"kms:Decrypt","Resource":"*"}}"#,
            &["use either \"Action\" or \"NotAction\", not both"],
        ),
        (
            "neither Action nor NotAction",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Resource":"*"}}"#,
            &["missing \"Action\"", "\"NotAction\""],
        ),
        (
            "both Resource and NotResource",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","NotResource":"key/k1"}}"#,
            &["use either \"Resource\" or \"NotResource\", not both"],
        ),
        (
            "missing Resource in identity policy",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"kms:*"}}"#,
            &["missing \"Resource\"", "\"Resource\": \"*\""],
        ),
        (
            "Principal in identity policy",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}}"#,
            &[
                "\"Principal\" is not allowed in an identity policy",
                "remove it",
            ],
        ),
        (
            "missing Principal in key policy",
            Key,
            r#"{"Version":"2012-10-17","Statement":{"Sid":"Use","Effect":"Allow","Action":"kms:*","Resource":"*"}}"#,
            &["Statement[0] (Sid \"Use\"): key policy statements must name a \"Principal\""],
        ),
        (
            "NotPrincipal",
            Key,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Deny","NotPrincipal":{"AWS":"user/alice"},"Action":"kms:*"}}"#,
            &["\"NotPrincipal\" is not supported"],
        ),
        (
            "malformed principal: empty name",
            Key,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":{"AWS":"user/"},"Action":"kms:*"}}"#,
            &["invalid principal \"user/\"", "\"user/<name>\""],
        ),
        (
            "malformed principal: unknown type in a list",
            Key,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":{"AWS":["user/alice","group/admins"]},"Action":"kms:*"}}"#,
            &["invalid principal \"group/admins\""],
        ),
        (
            "malformed principal: bad character",
            Key,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":{"AWS":"user/al ice"},"Action":"kms:*"}}"#,
            &["invalid principal \"user/al ice\""],
        ),
        (
            "malformed principal: bare string",
            Key,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"user/alice","Action":"kms:*"}}"#,
            &["\"Principal\": {\"AWS\": \"user/alice\"}"],
        ),
        (
            "unsupported principal type",
            Key,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":{"Service":"kms"},"Action":"kms:*"}}"#,
            &["unsupported principal type \"Service\"", "only \"AWS\""],
        ),
        (
            "empty principal object",
            Key,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":{},"Action":"kms:*"}}"#,
            &["\"Principal\" must not be empty"],
        ),
        (
            "unknown action prefix",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["kms:Decrypt","s3:GetObject"],"Resource":"*"}}"#,
            &[
                "unknown service prefix \"s3\" in action \"s3:GetObject\"",
                "use kms, table or iam",
            ],
        ),
        (
            "action without prefix",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"Decrypt","Resource":"*"}}"#,
            &["invalid action \"Decrypt\"", "\"kms:Decrypt\""],
        ),
        (
            "action with a space",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"kms:Decrypt ","Resource":"*"}}"#,
            &["invalid action \"kms:Decrypt \""],
        ),
        (
            "Action not a string",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":42,"Resource":"*"}}"#,
            &[
                "\"Action\" must be a string or an array of strings",
                "found a number",
            ],
        ),
        (
            "empty Action array",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":[],"Resource":"*"}}"#,
            &["\"Action\" must not be empty"],
        ),
        (
            "resource given as an ARN",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"arn:aws:kms:us-east-1:111122223333:key/k1"}}"#,
            &[
                "invalid resource \"arn:aws:kms:us-east-1:111122223333:key/k1\"",
                "key/<id>",
            ],
        ),
        (
            "resource type in the wrong case",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","NotResource":"Key/k1"}}"#,
            &["invalid resource \"Key/k1\""],
        ),
        (
            "unknown condition operator",
            Identity,
            r#"{"Version":"2012-10-17","Statement":[
                {"Effect":"Allow","Action":"*","Resource":"*"},
                {"Sid":"AllowUse","Effect":"Allow","Action":"kms:Decrypt","Resource":"*",
                 "Condition":{"StringEqualz":{"kms:ViaService":"service/table-service"}}}]}"#,
            &[
                "Statement[1] (Sid \"AllowUse\"): unknown condition operator \"StringEqualz\"",
                "StringEquals",
            ],
        ),
        (
            "operator names are case-sensitive",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"stringequals":{"kms:KeySpec":"x"}}}}"#,
            &["unknown condition operator \"stringequals\""],
        ),
        (
            "Null takes no set qualifier",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"ForAllValues:Null":{"kms:KeySpec":"true"}}}}"#,
            &[
                "unknown condition operator \"ForAllValues:Null\"",
                "not on Null",
            ],
        ),
        (
            "Null takes no IfExists",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"NullIfExists":{"kms:KeySpec":"true"}}}}"#,
            &["unknown condition operator \"NullIfExists\""],
        ),
        (
            "unknown condition key",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContextt":"x"}}}}"#,
            &[
                "unknown condition key \"kms:EncryptionContextt\" under StringEquals",
                "kms:EncryptionContext:<key>",
            ],
        ),
        (
            "encryption context key without a name",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:":"x"}}}}"#,
            &["unknown condition key \"kms:EncryptionContext:\""],
        ),
        (
            "condition key from another service",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"aws:SourceIp":"10.0.0.1"}}}}"#,
            &["unknown condition key \"aws:SourceIp\""],
        ),
        (
            "non-boolean Bool value",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"Bool":{"kms:GrantIsForAWSResource":"yes"}}}}"#,
            &[
                "Bool condition on \"kms:GrantIsForAWSResource\"",
                "value \"yes\" must be \"true\" or \"false\"",
            ],
        ),
        (
            "non-boolean Null value",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"Null":{"kms:ViaService":"maybe"}}}}"#,
            &["value \"maybe\" must be \"true\" or \"false\""],
        ),
        (
            "numeric condition value",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"kms:KeySpec":5}}}}"#,
            &["values must be strings or booleans", "found a number"],
        ),
        (
            "empty condition value list",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"kms:KeySpec":[]}}}}"#,
            &["list at least one value"],
        ),
        (
            "empty operator block",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{}}}}"#,
            &["\"Condition.StringEquals\" must not be empty"],
        ),
        (
            "Condition not an object",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":"kms:ViaService"}}"#,
            &["\"Condition\" must be an object"],
        ),
        (
            "Bool on a string key",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"Bool":{"kms:ViaService":true}}}}"#,
            &[
                "operator Bool cannot test \"kms:ViaService\"",
                "use a String operator",
            ],
        ),
        (
            "string operator on a boolean key",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"kms:GrantIsForAWSResource":"true"}}}}"#,
            &[
                "operator StringEquals cannot test \"kms:GrantIsForAWSResource\"",
                "use Bool",
            ],
        ),
        (
            "duplicate Sid",
            Identity,
            r#"{"Version":"2012-10-17","Statement":[
                {"Sid":"A","Effect":"Allow","Action":"*","Resource":"*"},
                {"Sid":"A","Effect":"Deny","Action":"kms:Decrypt","Resource":"*"}]}"#,
            &["Statement[1] (Sid \"A\"): Sid \"A\" is already used by Statement[0]"],
        ),
        (
            "empty Sid",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Sid":"","Effect":"Allow","Action":"*","Resource":"*"}}"#,
            &["\"Sid\" must not be empty"],
        ),
    ]);
}

/// Cases whose JSON is too big or too repetitive to write out literally.
#[test]
fn parse_rejects_generated_documents() {
    let statement = r#"{"Effect":"Allow","Action":"*","Resource":"*"}"#;
    let valid = format!(r#"{{"Version":"2012-10-17","Statement":[{statement}]}}"#);
    let oversized = format!("{valid}{}", " ".repeat(MAX_POLICY_BYTES + 1 - valid.len()));
    let many = vec![statement; MAX_STATEMENTS + 1].join(",");
    let too_many = format!(r#"{{"Version":"2012-10-17","Statement":[{many}]}}"#);
    let long_name = format!(
        r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Allow","Principal":{{"AWS":"user/{}"}},"Action":"kms:*"}}}}"#,
        "a".repeat(65)
    );
    check_rejected(&[
        (
            "over 32 KiB",
            Identity,
            oversized.as_str(),
            &["32769 bytes", "limit is 32768 bytes"],
        ),
        (
            "over 100 statements",
            Identity,
            too_many.as_str(),
            &["101 statements", "limit is 100"],
        ),
        (
            "principal name over 64 characters",
            Key,
            long_name.as_str(),
            &["invalid principal", "1 to 64 characters"],
        ),
    ]);
}

#[test]
fn parse_accepts_documents() {
    let statement = r#"{"Effect":"Allow","Action":"*","Resource":"*"}"#;
    let valid = format!(r#"{{"Version":"2012-10-17","Statement":[{statement}]}}"#);
    let at_limit = format!("{valid}{}", " ".repeat(MAX_POLICY_BYTES - valid.len()));
    let hundred = vec![statement; MAX_STATEMENTS].join(",");
    let hundred = format!(r#"{{"Version":"2012-10-17","Statement":[{hundred}]}}"#);
    check_accepted(&[
        ("exactly 32 KiB", Identity, at_limit.as_str(), 1),
        ("exactly 100 statements", Identity, hundred.as_str(), 100),
        (
            "single statement object",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"kms:Decrypt","Resource":"key/*"}}"#,
            1,
        ),
        (
            "statement array with Id",
            Identity,
            r#"{"Version":"2012-10-17","Id":"tables","Statement":[
                {"Sid":"Read","Effect":"Allow","Action":["table:GetItem","table:Query"],"Resource":"table/*"},
                {"Sid":"NoSecrets","Effect":"Deny","Action":"table:*","Resource":"table/secrets"},
                {"Effect":"Allow","NotAction":"iam:*","NotResource":["user/*","alias/admin-?"]}]}"#,
            3,
        ),
        (
            "key policy without Resource",
            Key,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":{"AWS":"account"},"Action":"kms:*"}}"#,
            1,
        ),
        (
            "key policy with every principal form",
            Key,
            r#"{"Version":"2012-10-17","Statement":[
                {"Effect":"Allow","Principal":"*","Action":"kms:Encrypt"},
                {"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:Encrypt"},
                {"Effect":"Allow","Principal":{"AWS":["user/a.b@c_d-e+f=g,h","service/table-service","account"]},"Action":"kms:*","Resource":"key/k1"}]}"#,
            3,
        ),
        (
            "every operator form and JSON booleans",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Sid":"Conditions with spaces","Effect":"Allow","Action":"KMS:Decrypt","Resource":"*","Condition":{
                "StringEqualsIfExists":{"kms:ViaService":"service/table-service"},
                "ForAnyValue:StringNotLikeIfExists":{"kms:EncryptionContextKeys":["secret*"]},
                "ForAllValues:StringEqualsIgnoreCase":{"kms:GrantOperations":["Decrypt","Encrypt"]},
                "Bool":{"kms:GrantIsForAWSResource":false},
                "Null":{"kms:EncryptionContext:tenant":false},
                "ForAnyValue:Bool":{"kms:GrantIsForAWSResource":["true",true]}}}}"#,
            1,
        ),
        (
            "empty Condition object",
            Identity,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{}}}"#,
            1,
        ),
    ]);
}

#[test]
fn managed_policies_parse_as_identity_policies() {
    let names: Vec<&str> = managed_policies().iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "AdministratorAccess",
            "TableFullAccess",
            "TableReadOnlyAccess",
            "KeyAdministratorAccess"
        ]
    );
    let cases: Vec<(&str, PolicyKind, &str, usize)> = managed_policies()
        .iter()
        .map(|&(name, json)| (name, Identity, json, 1))
        .collect();
    check_accepted(&cases);
}

#[test]
fn default_key_policy_parses_and_cannot_be_injected() {
    let policy = default_key_policy("user/alice");
    assert!(
        policy.contains("\n  \"Statement\": ["),
        "not pretty: {policy}"
    );
    check_accepted(&[("default key policy", Key, policy.as_str(), 2)]);

    let injected = default_key_policy(r#"user/x"},"Principal":{"AWS":"*"#);
    let identity = default_key_policy("user/alice");
    check_rejected(&[
        (
            "creator with JSON metacharacters stays one string",
            Key,
            injected.as_str(),
            &[
                r#"Statement[1] (Sid "AllowKeyCreatorFullControl"): invalid principal "user/x"},"Principal":{"AWS":"*""#,
            ],
        ),
        (
            "default key policy is not an identity policy",
            Identity,
            identity.as_str(),
            &["Statement[0] (Sid \"EnableIdentityPolicies\"): \"Principal\" is not allowed"],
        ),
    ]);
}

// ------------------------------------------------------------- conditions

/// Each condition is put into an identity policy that allows kms:Decrypt
/// for `user/bob`; the case says whether the request is then allowed.
fn check_conditions(cases: &[(&str, Context<'_>, bool)]) {
    for &(condition, context, expected) in cases {
        let json = format!(
            r#"{{"Version":"2012-10-17","Statement":{{"Sid":"Cond","Effect":"Allow","Action":"kms:Decrypt","Resource":"*","Condition":{condition}}}}}"#
        );
        let doc = parse_or_panic(condition, &json, Identity);
        let context_values = context_from(context);
        let request = Request {
            principal: "user/bob",
            action: "kms:Decrypt",
            resource: "key/k1",
            context: &context_values,
        };
        let evaluation = Evaluation {
            key_policy: None,
            identity_policies: &[("test", &doc)],
            grant: None,
        };
        assert_eq!(
            evaluate(&request, &evaluation).is_allowed(),
            expected,
            "condition {condition} with context {context:?}"
        );
    }
}

const VIA: &str = "kms:ViaService";
const TABLES: &str = "service/table-service";
const OPS: &str = "kms:GrantOperations";
const EC_KEYS: &str = "kms:EncryptionContextKeys";
const TENANT: &str = "kms:EncryptionContext:tenant";
const AWS_RESOURCE: &str = "kms:GrantIsForAWSResource";

#[test]
fn condition_string_operators() {
    check_conditions(&[
        // StringEquals: OR over listed values, AND over keys and blocks.
        (
            r#"{"StringEquals":{"kms:ViaService":"service/table-service"}}"#,
            &[(VIA, &[TABLES])],
            true,
        ),
        (
            r#"{"StringEquals":{"kms:ViaService":"service/table-service"}}"#,
            &[(VIA, &["service/other"])],
            false,
        ),
        (
            r#"{"StringEquals":{"kms:ViaService":"service/table-service"}}"#,
            &[],
            false,
        ),
        (
            r#"{"StringEquals":{"kms:ViaService":"service/table-service"}}"#,
            &[(VIA, &["SERVICE/table-service"])],
            false,
        ),
        (
            r#"{"StringEquals":{"kms:KeySpec":["RSA_2048","SYMMETRIC_DEFAULT"]}}"#,
            &[("kms:KeySpec", &["SYMMETRIC_DEFAULT"])],
            true,
        ),
        (
            r#"{"StringEquals":{"kms:KeySpec":"SYMMETRIC_DEFAULT","kms:RequestAlias":"alias/orders"}}"#,
            &[
                ("kms:KeySpec", &["SYMMETRIC_DEFAULT"]),
                ("kms:RequestAlias", &["alias/orders"]),
            ],
            true,
        ),
        (
            r#"{"StringEquals":{"kms:KeySpec":"SYMMETRIC_DEFAULT","kms:RequestAlias":"alias/orders"}}"#,
            &[("kms:KeySpec", &["SYMMETRIC_DEFAULT"])],
            false,
        ),
        (
            r#"{"StringEquals":{"kms:KeySpec":"SYMMETRIC_DEFAULT"},"StringLike":{"kms:RequestAlias":"alias/orders-*"}}"#,
            &[
                ("kms:KeySpec", &["SYMMETRIC_DEFAULT"]),
                ("kms:RequestAlias", &["alias/users"]),
            ],
            false,
        ),
        (
            r#"{"StringEquals":{"kms:KeySpec":"SYMMETRIC_DEFAULT"},"StringLike":{"kms:RequestAlias":"alias/orders-*"}}"#,
            &[
                ("kms:KeySpec", &["SYMMETRIC_DEFAULT"]),
                ("kms:RequestAlias", &["alias/orders-eu"]),
            ],
            true,
        ),
        (
            r#"{"StringEquals":{"KMS:VIASERVICE":"service/table-service"}}"#,
            &[("kms:viaservice", &[TABLES])],
            true,
        ),
        (
            r#"{"StringEquals":{"kms:GrantOperations":"Decrypt"}}"#,
            &[(OPS, &["Encrypt", "Decrypt"])],
            true,
        ),
        // StringNotEquals: an absent key satisfies it.
        (
            r#"{"StringNotEquals":{"kms:ViaService":"service/table-service"}}"#,
            &[],
            true,
        ),
        (
            r#"{"StringNotEquals":{"kms:ViaService":"service/table-service"}}"#,
            &[(VIA, &["service/other"])],
            true,
        ),
        (
            r#"{"StringNotEquals":{"kms:ViaService":"service/table-service"}}"#,
            &[(VIA, &[TABLES])],
            false,
        ),
        (
            r#"{"StringNotEquals":{"kms:GrantOperations":"CreateGrant"}}"#,
            &[(OPS, &["Decrypt", "CreateGrant"])],
            false,
        ),
        (
            r#"{"StringNotEquals":{"kms:GrantOperations":"CreateGrant"}}"#,
            &[(OPS, &["Decrypt", "Encrypt"])],
            true,
        ),
        // IgnoreCase variants fold ASCII case of the values.
        (
            r#"{"StringEqualsIgnoreCase":{"kms:ViaService":"service/table-service"}}"#,
            &[(VIA, &["SERVICE/Table-Service"])],
            true,
        ),
        (
            r#"{"StringEqualsIgnoreCase":{"kms:ViaService":"service/table-service"}}"#,
            &[(VIA, &["service/other"])],
            false,
        ),
        (
            r#"{"StringEqualsIgnoreCase":{"kms:ViaService":"service/table-service"}}"#,
            &[],
            false,
        ),
        (
            r#"{"StringNotEqualsIgnoreCase":{"kms:ViaService":"service/table-service"}}"#,
            &[(VIA, &["SERVICE/TABLE-SERVICE"])],
            false,
        ),
        (
            r#"{"StringNotEqualsIgnoreCase":{"kms:ViaService":"service/table-service"}}"#,
            &[(VIA, &["service/other"])],
            true,
        ),
        (
            r#"{"StringNotEqualsIgnoreCase":{"kms:ViaService":"service/table-service"}}"#,
            &[],
            true,
        ),
        // StringLike is a case-sensitive wildcard match.
        (
            r#"{"StringLike":{"kms:EncryptionContext:tenant":"acme-*"}}"#,
            &[(TENANT, &["acme-prod"])],
            true,
        ),
        (
            r#"{"StringLike":{"kms:EncryptionContext:tenant":"acme-*"}}"#,
            &[(TENANT, &["ACME-prod"])],
            false,
        ),
        (
            r#"{"StringLike":{"kms:EncryptionContext:tenant":"acme-*"}}"#,
            &[],
            false,
        ),
        (
            r#"{"StringLike":{"kms:RequestAlias":"alias/orders-??"}}"#,
            &[("kms:RequestAlias", &["alias/orders-eu"])],
            true,
        ),
        (
            r#"{"StringNotLike":{"kms:EncryptionContext:tenant":"acme-*"}}"#,
            &[(TENANT, &["other"])],
            true,
        ),
        (
            r#"{"StringNotLike":{"kms:EncryptionContext:tenant":"acme-*"}}"#,
            &[(TENANT, &["acme-prod"])],
            false,
        ),
        (
            r#"{"StringNotLike":{"kms:EncryptionContext:tenant":"acme-*"}}"#,
            &[],
            true,
        ),
    ]);
}

#[test]
fn condition_if_exists_bool_and_null() {
    check_conditions(&[
        (
            r#"{"StringEqualsIfExists":{"kms:ViaService":"service/table-service"}}"#,
            &[],
            true,
        ),
        (
            r#"{"StringEqualsIfExists":{"kms:ViaService":"service/table-service"}}"#,
            &[(VIA, &["service/other"])],
            false,
        ),
        (
            r#"{"StringEqualsIfExists":{"kms:ViaService":"service/table-service"}}"#,
            &[(VIA, &[TABLES])],
            true,
        ),
        (
            r#"{"StringEqualsIgnoreCaseIfExists":{"kms:ViaService":"service/table-service"}}"#,
            &[],
            true,
        ),
        (
            r#"{"StringLikeIfExists":{"kms:RequestAlias":"alias/orders*"}}"#,
            &[("kms:RequestAlias", &["alias/users"])],
            false,
        ),
        (
            r#"{"StringLikeIfExists":{"kms:RequestAlias":"alias/orders*"}}"#,
            &[],
            true,
        ),
        (
            r#"{"StringNotEqualsIfExists":{"kms:ViaService":"service/table-service"}}"#,
            &[(VIA, &[TABLES])],
            false,
        ),
        (
            r#"{"StringNotEqualsIfExists":{"kms:ViaService":"service/table-service"}}"#,
            &[],
            true,
        ),
        (
            r#"{"StringNotLikeIfExists":{"kms:ViaService":"service/*"}}"#,
            &[(VIA, &[TABLES])],
            false,
        ),
        (
            r#"{"BoolIfExists":{"kms:GrantIsForAWSResource":true}}"#,
            &[],
            true,
        ),
        (
            r#"{"BoolIfExists":{"kms:GrantIsForAWSResource":true}}"#,
            &[(AWS_RESOURCE, &["false"])],
            false,
        ),
        // Bool accepts JSON booleans and the strings "true"/"false".
        (
            r#"{"Bool":{"kms:GrantIsForAWSResource":true}}"#,
            &[(AWS_RESOURCE, &["true"])],
            true,
        ),
        (
            r#"{"Bool":{"kms:GrantIsForAWSResource":true}}"#,
            &[(AWS_RESOURCE, &["false"])],
            false,
        ),
        (r#"{"Bool":{"kms:GrantIsForAWSResource":true}}"#, &[], false),
        (
            r#"{"Bool":{"kms:GrantIsForAWSResource":"false"}}"#,
            &[(AWS_RESOURCE, &["false"])],
            true,
        ),
        // Null: "true" demands absence (or an empty set), "false" presence.
        (r#"{"Null":{"kms:ViaService":"true"}}"#, &[], true),
        (
            r#"{"Null":{"kms:ViaService":"true"}}"#,
            &[(VIA, &[TABLES])],
            false,
        ),
        (
            r#"{"Null":{"kms:ViaService":false}}"#,
            &[(VIA, &[TABLES])],
            true,
        ),
        (r#"{"Null":{"kms:ViaService":false}}"#, &[], false),
        (
            r#"{"Null":{"kms:EncryptionContextKeys":"true"}}"#,
            &[(EC_KEYS, &[])],
            true,
        ),
        (
            r#"{"Null":{"kms:EncryptionContextKeys":"false"}}"#,
            &[(EC_KEYS, &[])],
            false,
        ),
    ]);
}

#[test]
fn condition_set_operators() {
    check_conditions(&[
        // ForAnyValue: some request value must satisfy; nothing never does.
        (
            r#"{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"tenant"}}"#,
            &[(EC_KEYS, &["tenant", "purpose"])],
            true,
        ),
        (
            r#"{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"tenant"}}"#,
            &[(EC_KEYS, &["purpose"])],
            false,
        ),
        (
            r#"{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"tenant"}}"#,
            &[(EC_KEYS, &[])],
            false,
        ),
        (
            r#"{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"tenant"}}"#,
            &[],
            false,
        ),
        (
            r#"{"ForAnyValue:StringNotEquals":{"kms:EncryptionContextKeys":"tenant"}}"#,
            &[(EC_KEYS, &["tenant", "purpose"])],
            true,
        ),
        (
            r#"{"ForAnyValue:StringNotEquals":{"kms:EncryptionContextKeys":"tenant"}}"#,
            &[(EC_KEYS, &["tenant"])],
            false,
        ),
        (
            r#"{"ForAnyValue:StringNotEquals":{"kms:EncryptionContextKeys":"tenant"}}"#,
            &[(EC_KEYS, &[])],
            false,
        ),
        (
            r#"{"ForAnyValue:StringLike":{"kms:GrantOperations":"ReEncrypt*"}}"#,
            &[(OPS, &["Decrypt", "ReEncryptFrom"])],
            true,
        ),
        (
            r#"{"ForAnyValue:StringEqualsIgnoreCase":{"kms:GrantOperations":"decrypt"}}"#,
            &[(OPS, &["Encrypt", "DECRYPT"])],
            true,
        ),
        (
            r#"{"ForAnyValue:StringNotLike":{"kms:GrantOperations":"*Encrypt*"}}"#,
            &[(OPS, &["Encrypt", "ReEncryptTo"])],
            false,
        ),
        (
            r#"{"ForAnyValue:StringNotLike":{"kms:GrantOperations":"*Encrypt*"}}"#,
            &[(OPS, &["Encrypt", "Decrypt"])],
            true,
        ),
        (
            r#"{"ForAnyValue:StringNotEqualsIgnoreCase":{"kms:GrantOperations":"decrypt"}}"#,
            &[(OPS, &["DECRYPT"])],
            false,
        ),
        (
            r#"{"ForAnyValue:StringEqualsIfExists":{"kms:GrantOperations":"Decrypt"}}"#,
            &[],
            true,
        ),
        (
            r#"{"ForAnyValue:StringEqualsIfExists":{"kms:GrantOperations":"Decrypt"}}"#,
            &[(OPS, &["Encrypt"])],
            false,
        ),
        // ForAllValues: every request value must satisfy; nothing always does.
        (
            r#"{"ForAllValues:StringEquals":{"kms:GrantOperations":["Decrypt","Encrypt"]}}"#,
            &[(OPS, &["Decrypt"])],
            true,
        ),
        (
            r#"{"ForAllValues:StringEquals":{"kms:GrantOperations":["Decrypt","Encrypt"]}}"#,
            &[(OPS, &["Decrypt", "CreateGrant"])],
            false,
        ),
        (
            r#"{"ForAllValues:StringEquals":{"kms:GrantOperations":["Decrypt","Encrypt"]}}"#,
            &[(OPS, &[])],
            true,
        ),
        (
            r#"{"ForAllValues:StringEquals":{"kms:GrantOperations":["Decrypt","Encrypt"]}}"#,
            &[],
            true,
        ),
        (
            r#"{"ForAllValues:StringNotEquals":{"kms:GrantOperations":"CreateGrant"}}"#,
            &[(OPS, &["Decrypt", "Encrypt"])],
            true,
        ),
        (
            r#"{"ForAllValues:StringNotEquals":{"kms:GrantOperations":"CreateGrant"}}"#,
            &[(OPS, &["Decrypt", "CreateGrant"])],
            false,
        ),
        (
            r#"{"ForAllValues:StringNotEquals":{"kms:GrantOperations":"CreateGrant"}}"#,
            &[],
            true,
        ),
        (
            r#"{"ForAllValues:StringLike":{"kms:EncryptionContextKeys":["tenant","app*"]}}"#,
            &[(EC_KEYS, &["tenant", "app-id"])],
            true,
        ),
        (
            r#"{"ForAllValues:StringLike":{"kms:EncryptionContextKeys":["tenant","app*"]}}"#,
            &[(EC_KEYS, &["tenant", "secret"])],
            false,
        ),
        (
            r#"{"ForAllValues:StringNotLike":{"kms:EncryptionContextKeys":"secret*"}}"#,
            &[(EC_KEYS, &["tenant"])],
            true,
        ),
        (
            r#"{"ForAllValues:StringNotLike":{"kms:EncryptionContextKeys":"secret*"}}"#,
            &[(EC_KEYS, &["tenant", "secret-id"])],
            false,
        ),
        (
            r#"{"ForAllValues:StringEqualsIgnoreCase":{"kms:GrantOperations":"decrypt"}}"#,
            &[(OPS, &["DECRYPT", "Decrypt"])],
            true,
        ),
        (
            r#"{"ForAllValues:StringNotEqualsIgnoreCase":{"kms:GrantOperations":"creategrant"}}"#,
            &[(OPS, &["CreateGrant"])],
            false,
        ),
        (
            r#"{"ForAllValues:StringEqualsIfExists":{"kms:GrantOperations":"Decrypt"}}"#,
            &[(OPS, &["Decrypt", "CreateGrant"])],
            false,
        ),
        (
            r#"{"ForAnyValue:Bool":{"kms:GrantIsForAWSResource":true}}"#,
            &[(AWS_RESOURCE, &["true"])],
            true,
        ),
    ]);
}

#[test]
fn condition_keys() {
    check_conditions(&[
        // The whole condition key ignores case, the context key included
        // (as in AWS); the value does not under StringEquals.
        (
            r#"{"StringEquals":{"KMS:ENCRYPTIONCONTEXT:tenant":"acme"}}"#,
            &[(TENANT, &["acme"])],
            true,
        ),
        (
            r#"{"StringEquals":{"kms:EncryptionContext:Tenant":"acme"}}"#,
            &[(TENANT, &["acme"])],
            true,
        ),
        (
            r#"{"StringEquals":{"kms:EncryptionContext:tenant":"acme"}}"#,
            &[("Kms:encryptionContext:tenant", &["acme"])],
            true,
        ),
        (
            r#"{"StringEquals":{"kms:EncryptionContext:tenant":"acme"}}"#,
            &[(TENANT, &["Acme"])],
            false,
        ),
        (
            r#"{"StringEquals":{"kms:EncryptionContext:tenant":"acme","kms:EncryptionContext:purpose":"backup"}}"#,
            &[
                (TENANT, &["acme"]),
                ("kms:EncryptionContext:purpose", &["backup"]),
            ],
            true,
        ),
        (
            r#"{"StringEquals":{"kms:EncryptionContext:tenant":"acme","kms:EncryptionContext:purpose":"backup"}}"#,
            &[(TENANT, &["acme"])],
            false,
        ),
        (
            r#"{"StringEquals":{"kms:EncryptionContext:a:b c":"x"}}"#,
            &[("kms:EncryptionContext:a:b c", &["x"])],
            true,
        ),
        // kms:CallerPrincipal falls back to the request's principal.
        (
            r#"{"StringEquals":{"kms:CallerPrincipal":"user/bob"}}"#,
            &[],
            true,
        ),
        (
            r#"{"StringEquals":{"kms:CallerPrincipal":"user/alice"}}"#,
            &[],
            false,
        ),
        (
            r#"{"StringNotLike":{"kms:CallerPrincipal":"service/*"}}"#,
            &[],
            true,
        ),
        (
            r#"{"StringLike":{"kms:GranteePrincipal":"service/*"}}"#,
            &[("kms:GranteePrincipal", &[TABLES])],
            true,
        ),
        (
            r#"{"StringEquals":{"kms:RetiringPrincipal":"user/alice"}}"#,
            &[("kms:RetiringPrincipal", &["user/bob"])],
            false,
        ),
    ]);
}

#[test]
fn condition_context_lookup() {
    let mut context = ConditionContext::new();
    context.set("KMS:ViaService", "service/a");
    context.set("kms:viaservice", "service/b");
    context.set("kms:EncryptionContext:Tenant", "acme");
    // `add` keeps what is there: context keys that differ only by case.
    context.add("kms:EncryptionContext:TENANT", "evil");
    context.set_multi("kms:EncryptionContextKeys", Vec::new());
    let cases: &[(&str, Option<&[&str]>)] = &[
        ("kms:VIASERVICE", Some(&["service/b"])),
        ("KMS:ENCRYPTIONCONTEXT:Tenant", Some(&["acme", "evil"])),
        ("kms:EncryptionContext:tenant", Some(&["acme", "evil"])),
        ("kms:EncryptionContext:tenan", None),
        ("kms:encryptioncontextkeys", Some(&[])),
        ("kms:KeySpec", None),
    ];
    for &(key, expected) in cases {
        let actual: Option<Vec<&str>> = context
            .get(key)
            .map(|values| values.iter().map(String::as_str).collect());
        assert_eq!(actual.as_deref(), expected, "key {key:?}");
    }
}

// ------------------------------------------------------------- evaluation

#[derive(Clone, Copy)]
enum Expect<'a> {
    Allow(AllowedBy, &'a [&'a str]),
    Deny(&'a [&'a str]),
    Implicit(DenyReason),
}

#[derive(Clone, Copy)]
struct Case<'a> {
    name: &'a str,
    /// Parsed as a key policy.
    key_policy: Option<&'a str>,
    /// `(name, JSON)`, parsed as identity policies.
    identity: &'a [(&'a str, &'a str)],
    grant: Option<&'a str>,
    principal: &'a str,
    action: &'a str,
    resource: &'a str,
    context: Context<'a>,
    expect: Expect<'a>,
}

const BASE: Case<'static> = Case {
    name: "",
    key_policy: None,
    identity: &[],
    grant: None,
    principal: "user/bob",
    action: "kms:Decrypt",
    resource: "key/k1",
    context: &[],
    expect: Expect::Implicit(DenyReason::NoIdentityPolicyAllows),
};

fn check(cases: &[Case<'_>]) {
    for case in cases {
        let key_policy = case
            .key_policy
            .map(|json| parse_or_panic(case.name, json, Key));
        let identity: Vec<(&str, PolicyDocument)> = case
            .identity
            .iter()
            .map(|&(name, json)| (name, parse_or_panic(case.name, json, Identity)))
            .collect();
        let attached: Vec<(&str, &PolicyDocument)> =
            identity.iter().map(|(name, doc)| (*name, doc)).collect();
        let context = context_from(case.context);
        let request = Request {
            principal: case.principal,
            action: case.action,
            resource: case.resource,
            context: &context,
        };
        let evaluation = Evaluation {
            key_policy: key_policy.as_ref(),
            identity_policies: &attached,
            grant: case.grant,
        };
        let owned = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        let expected = match case.expect {
            Expect::Allow(via, matched) => Decision::Allow {
                via,
                matched: owned(matched),
            },
            Expect::Deny(matched) => Decision::ExplicitDeny {
                matched: owned(matched),
            },
            Expect::Implicit(reason) => Decision::ImplicitDeny { reason },
        };
        assert_eq!(
            evaluate(&request, &evaluation),
            expected,
            "case {:?}",
            case.name
        );
    }
}

use AllowedBy::{Grant, IdentityPolicy, KeyPolicy};
use DenyReason::{NoIdentityPolicyAllows, NoKeyPolicyAllows};

const KEY_NO_ACCOUNT: &str = r#"{"Version":"2012-10-17","Statement":[
    {"Sid":"AllowKeyCreatorFullControl","Effect":"Allow","Principal":{"AWS":"user/alice"},"Action":"kms:*","Resource":"*"}]}"#;
const KEY_ALLOW_THEN_DENY: &str = r#"{"Version":"2012-10-17","Statement":[
    {"Sid":"BobUses","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":"kms:*","Resource":"*"},
    {"Sid":"DenyDecrypt","Effect":"Deny","Principal":{"AWS":"user/bob"},"Action":"kms:Decrypt","Resource":"*"}]}"#;
const KEY_DENY_THEN_ALLOW: &str = r#"{"Version":"2012-10-17","Statement":[
    {"Sid":"DenyDecrypt","Effect":"Deny","Principal":{"AWS":"user/bob"},"Action":"kms:Decrypt","Resource":"*"},
    {"Sid":"BobUses","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":"kms:*","Resource":"*"}]}"#;
const KEY_ACCOUNT_DENY: &str = r#"{"Version":"2012-10-17","Statement":[
    {"Sid":"BobUses","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":"kms:*","Resource":"*"},
    {"Sid":"NoDeletion","Effect":"Deny","Principal":{"AWS":"account"},"Action":"kms:ScheduleKeyDeletion","Resource":"*"}]}"#;
const KEY_PUBLIC: &str = r#"{"Version":"2012-10-17","Statement":
    {"Sid":"Public","Effect":"Allow","Principal":"*","Action":"kms:Encrypt"}}"#;
const KEY_PUBLIC_AWS: &str = r#"{"Version":"2012-10-17","Statement":
    {"Sid":"Public","Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:Encrypt"}}"#;
const KEY_LIST: &str = r#"{"Version":"2012-10-17","Statement":
    {"Sid":"Listed","Effect":"Allow","Principal":{"AWS":["user/alice","service/table-service"]},"Action":"kms:Decrypt","Resource":"*"}}"#;
const KEY_SPECIFIC: &str = r#"{"Version":"2012-10-17","Statement":
    {"Sid":"OnlyK1","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":"kms:Decrypt","Resource":"key/k1"}}"#;
const KEY_VIA_TABLES: &str = r#"{"Version":"2012-10-17","Statement":
    {"Sid":"BobViaTables","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":["kms:Decrypt","kms:GenerateDataKey"],"Resource":"*",
     "Condition":{"StringEquals":{"kms:ViaService":"service/table-service"}}}}"#;
const KEY_DELEGATE_USERS_ONLY: &str = r#"{"Version":"2012-10-17","Statement":
    {"Sid":"DelegateForUsers","Effect":"Allow","Principal":{"AWS":"account"},"Action":"kms:*","Resource":"*",
     "Condition":{"StringLike":{"kms:CallerPrincipal":"user/*"}}}}"#;
const KEY_GRANT_OPS: &str = r#"{"Version":"2012-10-17","Statement":
    {"Sid":"LimitedGrants","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":"kms:CreateGrant","Resource":"*",
     "Condition":{"ForAllValues:StringEquals":{"kms:GrantOperations":["Decrypt","Encrypt"]}}}}"#;
const KEY_GRANT_OPS_PRESENT: &str = r#"{"Version":"2012-10-17","Statement":
    {"Sid":"LimitedGrants","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":"kms:CreateGrant","Resource":"*",
     "Condition":{"ForAllValues:StringEquals":{"kms:GrantOperations":["Decrypt","Encrypt"]},"Null":{"kms:GrantOperations":"false"}}}}"#;
const KEY_TENANT: &str = r#"{"Version":"2012-10-17","Statement":
    {"Sid":"AcmeOnly","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":"kms:Decrypt","Resource":"*",
     "Condition":{"StringEquals":{"kms:EncryptionContext:tenant":"acme"}}}}"#;

const ID_DECRYPT: &str = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"kms:Decrypt","Resource":"key/*"}}"#;
const ID_ALL_KMS: &str =
    r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"kms:*","Resource":"*"}}"#;
const ID_DENY_DECRYPT: &str = r#"{"Version":"2012-10-17","Statement":{"Sid":"NoDecrypt","Effect":"Deny","Action":"kms:Decrypt","Resource":"*"}}"#;
const ID_ALLOW_THEN_DENY: &str = r#"{"Version":"2012-10-17","Statement":[
    {"Effect":"Allow","Action":"kms:*","Resource":"*"},
    {"Effect":"Deny","Action":"kms:Decrypt","Resource":"*"}]}"#;
const ID_DENY_THEN_ALLOW: &str = r#"{"Version":"2012-10-17","Statement":[
    {"Effect":"Deny","Action":"kms:Decrypt","Resource":"*"},
    {"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#;
const ID_CASE: &str = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"KMS:decrypt","Resource":"*"}}"#;
const ID_GENERATE: &str = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["kms:Generate?ataKey","kms:ReEncrypt*"],"Resource":"*"}}"#;
const ID_NOT_ACTION: &str = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","NotAction":["kms:ScheduleKeyDeletion","kms:Delete*"],"Resource":"*"}}"#;
const ID_ONLY_DECRYPT: &str = r#"{"Version":"2012-10-17","Statement":[
    {"Sid":"AllowAll","Effect":"Allow","Action":"kms:*","Resource":"*"},
    {"Sid":"DenyAllButDecrypt","Effect":"Deny","NotAction":"kms:Decrypt","Resource":"*"}]}"#;
const ID_TABLES_EXCEPT_SECRETS: &str = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"table:*","NotResource":"table/secrets"}}"#;
const ID_TABLE_PATTERNS: &str = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"table:GetItem","Resource":["table/ord?rs","table/logs-*"]}}"#;
const ID_DENY_UNLESS_VIA: &str = r#"{"Version":"2012-10-17","Statement":[
    {"Sid":"AllowDecrypt","Effect":"Allow","Action":"kms:Decrypt","Resource":"*"},
    {"Sid":"DenyDirect","Effect":"Deny","Action":"kms:Decrypt","Resource":"*",
     "Condition":{"StringNotEquals":{"kms:ViaService":"service/table-service"}}}]}"#;
const ID_TWO_ALLOWS: &str = r#"{"Version":"2012-10-17","Statement":[
    {"Sid":"A","Effect":"Allow","Action":"kms:Decrypt","Resource":"*"},
    {"Sid":"B","Effect":"Allow","Action":"kms:*","Resource":"key/k1"}]}"#;

#[test]
fn evaluate_key_policy_grants_and_delegation() {
    let key_default = default_key_policy("user/alice");
    let key_default = Some(key_default.as_str());
    let delegated: &[&str] = &[
        "key-policy:EnableIdentityPolicies",
        "identity:use:Statement[0]",
    ];
    check(&[
        Case {
            name: "default deny without any policy",
            ..BASE
        },
        Case {
            name: "default deny for a non-key resource",
            resource: "table/orders",
            action: "table:GetItem",
            ..BASE
        },
        Case {
            name: "key policy alone does not allow an unnamed caller",
            key_policy: key_default,
            ..BASE
        },
        Case {
            name: "key creator allowed by the key policy",
            key_policy: key_default,
            principal: "user/alice",
            expect: Expect::Allow(KeyPolicy, &["key-policy:AllowKeyCreatorFullControl"]),
            ..BASE
        },
        Case {
            name: "identity policy allows through the account statement",
            key_policy: key_default,
            identity: &[("use", ID_DECRYPT)],
            expect: Expect::Allow(IdentityPolicy, delegated),
            ..BASE
        },
        Case {
            name: "identity policy resource pattern still applies",
            key_policy: key_default,
            identity: &[("use", ID_DECRYPT)],
            resource: "alias/orders",
            expect: Expect::Implicit(NoIdentityPolicyAllows),
            ..BASE
        },
        Case {
            name: "without an account statement identity policies are ignored",
            key_policy: Some(KEY_NO_ACCOUNT),
            identity: &[("use", ID_DECRYPT)],
            expect: Expect::Implicit(NoKeyPolicyAllows),
            ..BASE
        },
        Case {
            name: "without an account statement and without identity allow",
            key_policy: Some(KEY_NO_ACCOUNT),
            expect: Expect::Implicit(NoIdentityPolicyAllows),
            ..BASE
        },
        Case {
            name: "grant allows where the key policy does not",
            key_policy: Some(KEY_NO_ACCOUNT),
            grant: Some("g-1"),
            expect: Expect::Allow(Grant, &["grant:g-1"]),
            ..BASE
        },
        Case {
            name: "key policy allow is reported before a grant",
            key_policy: key_default,
            principal: "user/alice",
            grant: Some("g-1"),
            expect: Expect::Allow(KeyPolicy, &["key-policy:AllowKeyCreatorFullControl"]),
            ..BASE
        },
        Case {
            name: "grant is reported before identity policies",
            key_policy: key_default,
            identity: &[("use", ID_DECRYPT)],
            grant: Some("g-2"),
            expect: Expect::Allow(Grant, &["grant:g-2"]),
            ..BASE
        },
        Case {
            name: "identity policy alone allows a non-key resource",
            identity: &[("kms", ID_ALL_KMS)],
            expect: Expect::Allow(IdentityPolicy, &["identity:kms:Statement[0]"]),
            ..BASE
        },
        Case {
            name: "every allowing statement is reported",
            identity: &[("two", ID_TWO_ALLOWS)],
            expect: Expect::Allow(IdentityPolicy, &["identity:two:A", "identity:two:B"]),
            ..BASE
        },
        Case {
            name: "principal * allows anyone",
            key_policy: Some(KEY_PUBLIC),
            principal: "user/carol",
            action: "kms:Encrypt",
            expect: Expect::Allow(KeyPolicy, &["key-policy:Public"]),
            ..BASE
        },
        Case {
            name: "principal {\"AWS\": \"*\"} allows anyone",
            key_policy: Some(KEY_PUBLIC_AWS),
            principal: "service/batch",
            action: "kms:Encrypt",
            expect: Expect::Allow(KeyPolicy, &["key-policy:Public"]),
            ..BASE
        },
        Case {
            name: "principal list includes a service",
            key_policy: Some(KEY_LIST),
            principal: "service/table-service",
            expect: Expect::Allow(KeyPolicy, &["key-policy:Listed"]),
            ..BASE
        },
        Case {
            name: "principal list excludes others",
            key_policy: Some(KEY_LIST),
            principal: "user/carol",
            ..BASE
        },
        Case {
            name: "principal names match exactly",
            key_policy: Some(KEY_LIST),
            principal: "user/Alice",
            ..BASE
        },
        Case {
            name: "key policy names a specific key",
            key_policy: Some(KEY_SPECIFIC),
            expect: Expect::Allow(KeyPolicy, &["key-policy:OnlyK1"]),
            ..BASE
        },
        Case {
            name: "key policy naming another key",
            key_policy: Some(KEY_SPECIFIC),
            resource: "key/k2",
            ..BASE
        },
        Case {
            name: "conditional delegation admits users",
            key_policy: Some(KEY_DELEGATE_USERS_ONLY),
            identity: &[("use", ID_DECRYPT)],
            expect: Expect::Allow(
                IdentityPolicy,
                &["key-policy:DelegateForUsers", "identity:use:Statement[0]"],
            ),
            ..BASE
        },
        Case {
            name: "conditional delegation refuses services (kms:CallerPrincipal)",
            key_policy: Some(KEY_DELEGATE_USERS_ONLY),
            identity: &[("use", ID_DECRYPT)],
            principal: "service/batch",
            expect: Expect::Implicit(NoKeyPolicyAllows),
            ..BASE
        },
        Case {
            name: "AdministratorAccess uses keys through delegation",
            key_policy: key_default,
            identity: &[("AdministratorAccess", managed("AdministratorAccess"))],
            expect: Expect::Allow(
                IdentityPolicy,
                &[
                    "key-policy:EnableIdentityPolicies",
                    "identity:AdministratorAccess:Statement[0]",
                ],
            ),
            ..BASE
        },
        Case {
            name: "TableFullAccess covers tables",
            identity: &[("TableFullAccess", managed("TableFullAccess"))],
            action: "table:PutItem",
            resource: "table/orders",
            expect: Expect::Allow(IdentityPolicy, &["identity:TableFullAccess:Statement[0]"]),
            ..BASE
        },
        Case {
            name: "TableFullAccess does not cover keys",
            key_policy: key_default,
            identity: &[("TableFullAccess", managed("TableFullAccess"))],
            expect: Expect::Implicit(NoIdentityPolicyAllows),
            ..BASE
        },
        Case {
            name: "TableReadOnlyAccess reads",
            identity: &[("TableReadOnlyAccess", managed("TableReadOnlyAccess"))],
            action: "table:Query",
            resource: "table/orders",
            expect: Expect::Allow(
                IdentityPolicy,
                &["identity:TableReadOnlyAccess:Statement[0]"],
            ),
            ..BASE
        },
        Case {
            name: "TableReadOnlyAccess does not write",
            identity: &[("TableReadOnlyAccess", managed("TableReadOnlyAccess"))],
            action: "table:PutItem",
            resource: "table/orders",
            ..BASE
        },
        Case {
            name: "KeyAdministratorAccess schedules deletion",
            key_policy: key_default,
            identity: &[("KeyAdministratorAccess", managed("KeyAdministratorAccess"))],
            action: "kms:ScheduleKeyDeletion",
            expect: Expect::Allow(
                IdentityPolicy,
                &[
                    "key-policy:EnableIdentityPolicies",
                    "identity:KeyAdministratorAccess:Statement[0]",
                ],
            ),
            ..BASE
        },
        Case {
            name: "KeyAdministratorAccess cannot decrypt",
            key_policy: key_default,
            identity: &[("KeyAdministratorAccess", managed("KeyAdministratorAccess"))],
            ..BASE
        },
        Case {
            name: "KeyAdministratorAccess cannot generate data keys",
            key_policy: key_default,
            identity: &[("KeyAdministratorAccess", managed("KeyAdministratorAccess"))],
            action: "kms:GenerateDataKey",
            ..BASE
        },
        Case {
            name: "KeyAdministratorAccess cannot re-encrypt",
            key_policy: key_default,
            identity: &[("KeyAdministratorAccess", managed("KeyAdministratorAccess"))],
            action: "kms:ReEncryptFrom",
            ..BASE
        },
        Case {
            name: "KeyAdministratorAccess cannot compute MACs",
            key_policy: key_default,
            identity: &[("KeyAdministratorAccess", managed("KeyAdministratorAccess"))],
            action: "kms:GenerateMac",
            ..BASE
        },
    ]);
}

#[test]
fn evaluate_explicit_deny_wins_in_any_order() {
    let key_default = default_key_policy("user/alice");
    let key_default = Some(key_default.as_str());
    check(&[
        Case {
            name: "identity deny beats a grant",
            key_policy: Some(KEY_NO_ACCOUNT),
            identity: &[("deny", ID_DENY_DECRYPT)],
            grant: Some("g-1"),
            expect: Expect::Deny(&["identity:deny:NoDecrypt"]),
            ..BASE
        },
        Case {
            name: "identity deny beats the key policy allow",
            key_policy: key_default,
            principal: "user/alice",
            identity: &[("deny", ID_DENY_DECRYPT)],
            expect: Expect::Deny(&["identity:deny:NoDecrypt"]),
            ..BASE
        },
        Case {
            name: "identity policies: allow, then deny",
            key_policy: key_default,
            identity: &[("use", ID_DECRYPT), ("deny", ID_DENY_DECRYPT)],
            expect: Expect::Deny(&["identity:deny:NoDecrypt"]),
            ..BASE
        },
        Case {
            name: "identity policies: deny, then allow",
            key_policy: key_default,
            identity: &[("deny", ID_DENY_DECRYPT), ("use", ID_DECRYPT)],
            expect: Expect::Deny(&["identity:deny:NoDecrypt"]),
            ..BASE
        },
        Case {
            name: "key policy statements: allow, then deny",
            key_policy: Some(KEY_ALLOW_THEN_DENY),
            expect: Expect::Deny(&["key-policy:DenyDecrypt"]),
            ..BASE
        },
        Case {
            name: "key policy statements: deny, then allow",
            key_policy: Some(KEY_DENY_THEN_ALLOW),
            expect: Expect::Deny(&["key-policy:DenyDecrypt"]),
            ..BASE
        },
        Case {
            name: "key policy deny leaves other actions allowed",
            key_policy: Some(KEY_DENY_THEN_ALLOW),
            action: "kms:Encrypt",
            expect: Expect::Allow(KeyPolicy, &["key-policy:BobUses"]),
            ..BASE
        },
        Case {
            name: "identity statements: allow, then deny",
            identity: &[("mixed", ID_ALLOW_THEN_DENY)],
            expect: Expect::Deny(&["identity:mixed:Statement[1]"]),
            ..BASE
        },
        Case {
            name: "identity statements: deny, then allow",
            identity: &[("mixed", ID_DENY_THEN_ALLOW)],
            expect: Expect::Deny(&["identity:mixed:Statement[0]"]),
            ..BASE
        },
        Case {
            name: "denies in both policies are all reported",
            key_policy: Some(KEY_DENY_THEN_ALLOW),
            identity: &[("deny", ID_DENY_DECRYPT)],
            expect: Expect::Deny(&["key-policy:DenyDecrypt", "identity:deny:NoDecrypt"]),
            ..BASE
        },
        Case {
            name: "a deny for another action does not apply",
            key_policy: key_default,
            identity: &[("kms", ID_ALL_KMS), ("deny", ID_DENY_DECRYPT)],
            action: "kms:Encrypt",
            expect: Expect::Allow(
                IdentityPolicy,
                &[
                    "key-policy:EnableIdentityPolicies",
                    "identity:kms:Statement[0]",
                ],
            ),
            ..BASE
        },
        Case {
            name: "a key policy deny for the account covers every caller",
            key_policy: Some(KEY_ACCOUNT_DENY),
            action: "kms:ScheduleKeyDeletion",
            expect: Expect::Deny(&["key-policy:NoDeletion"]),
            ..BASE
        },
        Case {
            name: "the account deny leaves other actions alone",
            key_policy: Some(KEY_ACCOUNT_DENY),
            expect: Expect::Allow(KeyPolicy, &["key-policy:BobUses"]),
            ..BASE
        },
        Case {
            name: "a key policy deny for bob does not affect alice",
            key_policy: Some(KEY_DENY_THEN_ALLOW),
            principal: "user/alice",
            ..BASE
        },
    ]);
}

#[test]
fn evaluate_actions_and_resources() {
    check(&[
        Case {
            name: "policy action matched case-insensitively",
            identity: &[("case", ID_CASE)],
            expect: Expect::Allow(IdentityPolicy, &["identity:case:Statement[0]"]),
            ..BASE
        },
        Case {
            name: "request action matched case-insensitively",
            identity: &[("use", ID_DECRYPT)],
            action: "KMS:DECRYPT",
            expect: Expect::Allow(IdentityPolicy, &["identity:use:Statement[0]"]),
            ..BASE
        },
        Case {
            name: "? matches one character",
            identity: &[("gen", ID_GENERATE)],
            action: "kms:GenerateDataKey",
            expect: Expect::Allow(IdentityPolicy, &["identity:gen:Statement[0]"]),
            ..BASE
        },
        Case {
            name: "? does not match a longer action",
            identity: &[("gen", ID_GENERATE)],
            action: "kms:GenerateDataKeyPair",
            ..BASE
        },
        Case {
            name: "* matches an action suffix",
            identity: &[("gen", ID_GENERATE)],
            action: "kms:ReEncryptFrom",
            expect: Expect::Allow(IdentityPolicy, &["identity:gen:Statement[0]"]),
            ..BASE
        },
        Case {
            name: "service prefixes are not wildcards",
            identity: &[("kms", ID_ALL_KMS)],
            action: "table:GetItem",
            resource: "table/orders",
            ..BASE
        },
        Case {
            name: "NotAction allows unlisted actions",
            identity: &[("notaction", ID_NOT_ACTION)],
            expect: Expect::Allow(IdentityPolicy, &["identity:notaction:Statement[0]"]),
            ..BASE
        },
        Case {
            name: "NotAction excludes a listed action",
            identity: &[("notaction", ID_NOT_ACTION)],
            action: "kms:ScheduleKeyDeletion",
            ..BASE
        },
        Case {
            name: "NotAction excludes a wildcard match",
            identity: &[("notaction", ID_NOT_ACTION)],
            action: "kms:DeleteAlias",
            ..BASE
        },
        Case {
            name: "Deny with NotAction denies everything else",
            identity: &[("onlydecrypt", ID_ONLY_DECRYPT)],
            action: "kms:Encrypt",
            expect: Expect::Deny(&["identity:onlydecrypt:DenyAllButDecrypt"]),
            ..BASE
        },
        Case {
            name: "Deny with NotAction spares the listed action",
            identity: &[("onlydecrypt", ID_ONLY_DECRYPT)],
            expect: Expect::Allow(IdentityPolicy, &["identity:onlydecrypt:AllowAll"]),
            ..BASE
        },
        Case {
            name: "NotResource allows other resources",
            identity: &[("tables", ID_TABLES_EXCEPT_SECRETS)],
            action: "table:GetItem",
            resource: "table/orders",
            expect: Expect::Allow(IdentityPolicy, &["identity:tables:Statement[0]"]),
            ..BASE
        },
        Case {
            name: "NotResource excludes the listed resource",
            identity: &[("tables", ID_TABLES_EXCEPT_SECRETS)],
            action: "table:GetItem",
            resource: "table/secrets",
            ..BASE
        },
        Case {
            name: "resource ? wildcard",
            identity: &[("patterns", ID_TABLE_PATTERNS)],
            action: "table:GetItem",
            resource: "table/orders",
            expect: Expect::Allow(IdentityPolicy, &["identity:patterns:Statement[0]"]),
            ..BASE
        },
        Case {
            name: "resource * wildcard",
            identity: &[("patterns", ID_TABLE_PATTERNS)],
            action: "table:GetItem",
            resource: "table/logs-2024",
            expect: Expect::Allow(IdentityPolicy, &["identity:patterns:Statement[0]"]),
            ..BASE
        },
        Case {
            name: "resources are case-sensitive",
            identity: &[("patterns", ID_TABLE_PATTERNS)],
            action: "table:GetItem",
            resource: "table/Orders",
            ..BASE
        },
        Case {
            name: "resource type must match",
            identity: &[("patterns", ID_TABLE_PATTERNS)],
            action: "table:GetItem",
            resource: "key/orders",
            ..BASE
        },
    ]);
}

#[test]
fn evaluate_conditions_in_policies() {
    let via_tables: Context<'_> = &[(VIA, &[TABLES])];
    check(&[
        Case {
            name: "kms:ViaService lets bob decrypt through the table service",
            key_policy: Some(KEY_VIA_TABLES),
            context: via_tables,
            expect: Expect::Allow(KeyPolicy, &["key-policy:BobViaTables"]),
            ..BASE
        },
        Case {
            name: "kms:ViaService refuses direct calls",
            key_policy: Some(KEY_VIA_TABLES),
            ..BASE
        },
        Case {
            name: "kms:ViaService refuses other services",
            key_policy: Some(KEY_VIA_TABLES),
            context: &[(VIA, &["service/batch"])],
            ..BASE
        },
        Case {
            name: "deny unless via a service: direct call",
            identity: &[("via", ID_DENY_UNLESS_VIA)],
            expect: Expect::Deny(&["identity:via:DenyDirect"]),
            ..BASE
        },
        Case {
            name: "deny unless via a service: through the service",
            identity: &[("via", ID_DENY_UNLESS_VIA)],
            context: via_tables,
            expect: Expect::Allow(IdentityPolicy, &["identity:via:AllowDecrypt"]),
            ..BASE
        },
        Case {
            name: "encryption context matches",
            key_policy: Some(KEY_TENANT),
            context: &[(TENANT, &["acme"])],
            expect: Expect::Allow(KeyPolicy, &["key-policy:AcmeOnly"]),
            ..BASE
        },
        Case {
            name: "encryption context key case does not matter (as in AWS)",
            key_policy: Some(KEY_TENANT),
            context: &[("kms:EncryptionContext:Tenant", &["acme"])],
            expect: Expect::Allow(KeyPolicy, &["key-policy:AcmeOnly"]),
            ..BASE
        },
        Case {
            name: "kms:GrantOperations within the allowed set",
            key_policy: Some(KEY_GRANT_OPS),
            action: "kms:CreateGrant",
            context: &[(OPS, &["Decrypt"])],
            expect: Expect::Allow(KeyPolicy, &["key-policy:LimitedGrants"]),
            ..BASE
        },
        Case {
            name: "kms:GrantOperations outside the allowed set",
            key_policy: Some(KEY_GRANT_OPS),
            action: "kms:CreateGrant",
            context: &[(OPS, &["Decrypt", "CreateGrant"])],
            ..BASE
        },
        Case {
            name: "ForAllValues pitfall: no grant operations passes",
            key_policy: Some(KEY_GRANT_OPS),
            action: "kms:CreateGrant",
            context: &[(OPS, &[])],
            expect: Expect::Allow(KeyPolicy, &["key-policy:LimitedGrants"]),
            ..BASE
        },
        Case {
            name: "ForAllValues pitfall closed with Null false",
            key_policy: Some(KEY_GRANT_OPS_PRESENT),
            action: "kms:CreateGrant",
            context: &[(OPS, &[])],
            ..BASE
        },
    ]);
}

#[test]
fn deny_reason_text() {
    let cases = [
        (
            NoIdentityPolicyAllows,
            "kms:Decrypt",
            "because no identity-based policy allows the kms:Decrypt action",
        ),
        (
            NoKeyPolicyAllows,
            "kms:Decrypt",
            "because no resource-based policy allows the kms:Decrypt action",
        ),
        (
            NoIdentityPolicyAllows,
            "table:GetItem",
            "because no identity-based policy allows the table:GetItem action",
        ),
        (
            NoKeyPolicyAllows,
            "kms:ScheduleKeyDeletion",
            "because no resource-based policy allows the kms:ScheduleKeyDeletion action",
        ),
    ];
    for (reason, action, expected) in cases {
        assert_eq!(reason.explain(action), expected);
        assert!(expected.contains(reason.phrase()), "{reason:?}");
    }
}

/// The service-managed key's policy: anyone may use the key through the
/// service, and may give the service itself re-wrap grants through the
/// service; nothing else (no grants to others, no Decrypt grants, nothing
/// directly).
#[test]
fn service_managed_key_policy_allows_only_rewrap_grants_to_the_service() {
    let policy = crate::service::key_ops::service_managed_policy(TABLES);
    let base = Case {
        key_policy: Some(&policy),
        action: "kms:CreateGrant",
        ..BASE
    };
    const GRANTEE: &str = "kms:GranteePrincipal";
    check(&[
        Case {
            name: "re-wrap grant to the service, through the service",
            context: &[
                (VIA, &[TABLES]),
                (GRANTEE, &[TABLES]),
                (OPS, &["ReEncryptFrom", "ReEncryptTo", "RetireGrant"]),
            ],
            expect: Expect::Allow(
                KeyPolicy,
                &["key-policy:AllowRewrapGrantsToTheServiceViaService"],
            ),
            ..base
        },
        Case {
            name: "re-wrap grant to the service, directly",
            context: &[(GRANTEE, &[TABLES]), (OPS, &["ReEncryptFrom"])],
            expect: Expect::Implicit(NoIdentityPolicyAllows),
            ..base
        },
        Case {
            name: "grant to another principal, through the service",
            context: &[
                (VIA, &[TABLES]),
                (GRANTEE, &["user/bob"]),
                (OPS, &["ReEncryptFrom"]),
            ],
            expect: Expect::Implicit(NoIdentityPolicyAllows),
            ..base
        },
        Case {
            name: "Decrypt grant to the service, through the service",
            context: &[
                (VIA, &[TABLES]),
                (GRANTEE, &[TABLES]),
                (OPS, &["ReEncryptFrom", "Decrypt"]),
            ],
            expect: Expect::Implicit(NoIdentityPolicyAllows),
            ..base
        },
        Case {
            name: "grant through another service",
            context: &[
                (VIA, &["service/other"]),
                (GRANTEE, &[TABLES]),
                (OPS, &["ReEncryptFrom"]),
            ],
            expect: Expect::Implicit(NoIdentityPolicyAllows),
            ..base
        },
        Case {
            name: "Decrypt through the service",
            action: "kms:Decrypt",
            context: &[(VIA, &[TABLES])],
            expect: Expect::Allow(KeyPolicy, &["key-policy:AllowUseOnlyViaService"]),
            ..base
        },
        Case {
            name: "Decrypt directly",
            action: "kms:Decrypt",
            expect: Expect::Implicit(NoIdentityPolicyAllows),
            ..base
        },
    ]);
}

/// Rules added to the language since policies were first stored: a new
/// policy breaking one is refused, naming what to change; the same text
/// read back from the store still loads (with the refusal, for a warning)
/// and applies as written.
#[test]
fn newer_rules_refuse_new_policies_and_still_load_stored_ones() {
    let statement = |extra: &str| {
        format!(
            r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Allow","Action":"kms:Decrypt",{extra}}}}}"#
        )
    };
    let cases = [
        (
            "policy variable in a condition value",
            statement(
                r#""Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:user":"${aws:username}"}}"#,
            ),
            "policy variable",
        ),
        (
            "policy variable in a resource",
            statement(r#""Resource":"key/${aws:username}""#),
            "policy variable",
        ),
        (
            "ForAllValues on an encryption context key",
            statement(
                r#""Resource":"*","Condition":{"ForAllValues:StringEquals":{"kms:EncryptionContext:Department":"IT"}}"#,
            ),
            "use \"StringEquals\" instead",
        ),
        (
            "ForAllValues on kms:ViaService",
            statement(
                r#""Resource":"*","Condition":{"ForAllValues:StringLike":{"kms:ViaService":"service/*"}}"#,
            ),
            "use \"StringLike\" instead",
        ),
    ];
    for (case, json, needle) in &cases {
        let refused = PolicyDocument::parse(json, Identity)
            .expect_err(case)
            .to_string();
        assert!(refused.contains(needle), "{case}: {refused}");
        let (doc, newer) = PolicyDocument::load(json, Identity).expect(case);
        assert_eq!(
            newer.map(|e| e.to_string()).as_deref(),
            Some(refused.as_str()),
            "{case}"
        );
        assert_eq!(doc.statement_count(), 1, "{case}");
    }
    // Stored, the ForAllValues one applies as written: vacuously true
    // without the key, which is why new policies may not say it.
    let (doc, _) = PolicyDocument::load(&cases[2].1, Identity).unwrap();
    let empty = ConditionContext::new();
    let request = Request {
        principal: "user/bob",
        action: "kms:Decrypt",
        resource: "key/k1",
        context: &empty,
    };
    let evaluation = Evaluation {
        key_policy: None,
        identity_policies: &[("stored", &doc)],
        grant: None,
    };
    assert!(evaluate(&request, &evaluation).is_allowed());
    // The multi-valued keys still take ForAllValues, and a policy that
    // breaks no newer rule loads without a refusal.
    let fine = statement(
        r#""Resource":"*","Condition":{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["tenant"]}}"#,
    );
    PolicyDocument::parse(&fine, Identity).unwrap();
    assert!(PolicyDocument::load(&fine, Identity).unwrap().1.is_none());
}

/// A ciphertext made before such contexts were refused may bind context
/// keys that differ only by case: a condition on them tests each value on
/// its own and takes the stricter reading for the statement's effect.
#[test]
fn merged_case_variants_of_a_context_key_read_strictly() {
    let identity = |statement: &str| {
        PolicyDocument::parse(
            &format!(r#"{{"Version":"2012-10-17","Statement":[{statement}]}}"#),
            Identity,
        )
        .unwrap()
    };
    let allow_acme = identity(
        r#"{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:Tenant":"acme"}}}"#,
    );
    let allow_all_but_acme_denied = identity(
        r#"{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"},
           {"Effect":"Deny","Action":"kms:Decrypt","Resource":"*","Condition":{"StringNotEquals":{"kms:EncryptionContext:Tenant":"acme"}}}"#,
    );
    let decide = |doc: &PolicyDocument, values: &[&str]| {
        let mut context = ConditionContext::new();
        for (i, v) in values.iter().enumerate() {
            // "Tenant", "tenant", ...: one key for conditions.
            let key = if i % 2 == 0 { "Tenant" } else { "tenant" };
            context.add(&format!("kms:EncryptionContext:{key}"), *v);
        }
        let request = Request {
            principal: "user/bob",
            action: "kms:Decrypt",
            resource: "key/k1",
            context: &context,
        };
        evaluate(
            &request,
            &Evaluation {
                key_policy: None,
                identity_policies: &[("p", doc)],
                grant: None,
            },
        )
        .is_allowed()
    };
    // Allow: every value must satisfy it.
    assert!(decide(&allow_acme, &["acme"]));
    assert!(decide(&allow_acme, &["acme", "acme"]));
    assert!(!decide(&allow_acme, &["acme", "evil"]));
    assert!(!decide(&allow_acme, &["evil", "acme"]));
    // ForAnyValue reads no laxer.
    let allow_any_acme = identity(
        r#"{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*","Condition":{"ForAnyValue:StringEquals":{"kms:EncryptionContext:Tenant":"acme"}}}"#,
    );
    assert!(decide(&allow_any_acme, &["acme", "acme"]));
    assert!(!decide(&allow_any_acme, &["acme", "evil"]));
    // Deny: any value triggers it (a negated test included).
    assert!(decide(&allow_all_but_acme_denied, &["acme"]));
    assert!(decide(&allow_all_but_acme_denied, &["acme", "acme"]));
    assert!(!decide(&allow_all_but_acme_denied, &["evil", "acme"]));
    assert!(!decide(&allow_all_but_acme_denied, &["acme", "evil"]));
}
