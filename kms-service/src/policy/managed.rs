//! Built-in policy texts: the default key policy given to new keys and the
//! managed identity policies that administrators attach to users.

/// The key policy a new key gets, as pretty JSON: identity policies may
/// grant access to the key (`EnableIdentityPolicies`), and its creator keeps
/// full control so that a fresh key can never be orphaned.
///
/// `creator` is embedded as a JSON string, so it cannot inject statements; a
/// creator that is not a valid principal makes the result fail to parse.
pub fn default_key_policy(creator: &str) -> String {
    let creator = serde_json::Value::String(creator.to_owned());
    format!(
        r#"{{
  "Version": "2012-10-17",
  "Statement": [
    {{
      "Sid": "EnableIdentityPolicies",
      "Effect": "Allow",
      "Principal": {{"AWS": "account"}},
      "Action": "kms:*",
      "Resource": "*"
    }},
    {{
      "Sid": "AllowKeyCreatorFullControl",
      "Effect": "Allow",
      "Principal": {{"AWS": {creator}}},
      "Action": "kms:*",
      "Resource": "*"
    }}
  ]
}}"#
    )
}

/// `(name, JSON text)` of every managed identity policy.
pub fn managed_policies() -> &'static [(&'static str, &'static str)] {
    MANAGED
}

const MANAGED: &[(&str, &str)] = &[
    ("AdministratorAccess", ADMINISTRATOR_ACCESS),
    ("TableFullAccess", TABLE_FULL_ACCESS),
    ("TableReadOnlyAccess", TABLE_READ_ONLY_ACCESS),
    ("KeyAdministratorAccess", KEY_ADMINISTRATOR_ACCESS),
];

const ADMINISTRATOR_ACCESS: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": "*",
      "Resource": "*"
    }
  ]
}"#;

const TABLE_FULL_ACCESS: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": "table:*",
      "Resource": "*"
    }
  ]
}"#;

const TABLE_READ_ONLY_ACCESS: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": [
        "table:GetItem",
        "table:Query",
        "table:Scan",
        "table:BatchGetItem",
        "table:DescribeTable",
        "table:ListTables"
      ],
      "Resource": "*"
    }
  ]
}"#;

// AWS's key-administrator statement: administrators manage keys and are
// not given their use directly (no Encrypt, Decrypt, GenerateDataKey*,
// ReEncrypt* or Mac actions). As in AWS, managing includes kms:CreateGrant
// (Create*) and kms:PutKeyPolicy (Put*), with which an administrator can
// give use to anyone, themselves included: administration is trusted, not
// a barrier. Where it must be one, add a Deny of those two actions. Use is
// omitted rather than denied so that a separate policy can still grant it.
const KEY_ADMINISTRATOR_ACCESS: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": [
        "kms:Create*",
        "kms:Describe*",
        "kms:Enable*",
        "kms:List*",
        "kms:Put*",
        "kms:Update*",
        "kms:Revoke*",
        "kms:Disable*",
        "kms:Get*",
        "kms:Delete*",
        "kms:TagResource",
        "kms:UntagResource",
        "kms:ScheduleKeyDeletion",
        "kms:CancelKeyDeletion",
        "kms:RotateKeyOnDemand"
      ],
      "Resource": "*"
    }
  ]
}"#;
