//! `kms.v1.KeyManagementService` over [`Kms`].

use std::sync::Arc;

use lockbox_proto::kms::v1 as pb;
use lockbox_proto::kms::v1::key_management_service_server::KeyManagementService;
use tonic::{Request, Response, Status};

use super::convert::{self, context, timestamp};
use super::{credentials, reply};
use crate::error::KmsError;
use crate::service::{CreateGrantInput, CreateKeyInput, DataKeyLength, Kms, data_key_length};

pub struct KeyManagementGrpc {
    kms: Arc<Kms>,
}

impl KeyManagementGrpc {
    pub fn new(kms: Arc<Kms>) -> Self {
        KeyManagementGrpc { kms }
    }
}

fn data_key_spec(value: i32) -> Result<Option<DataKeyLength>, KmsError> {
    match pb::DataKeySpec::try_from(value) {
        Ok(pb::DataKeySpec::Unspecified) => Ok(None),
        Ok(pb::DataKeySpec::Aes128) => Ok(Some(DataKeyLength::Aes128)),
        Ok(pb::DataKeySpec::Aes256) => Ok(Some(DataKeyLength::Aes256)),
        Err(_) => Err(KmsError::validation(format!(
            "key_spec {value} is not a known DataKeySpec"
        ))),
    }
}

#[tonic::async_trait]
impl KeyManagementService for KeyManagementGrpc {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let input = (|| {
            Ok(CreateKeyInput {
                description: r.description,
                spec: convert::key_spec(r.key_spec)?,
                usage: convert::key_usage(r.key_usage)?,
                policy: (!r.policy.is_empty()).then_some(r.policy),
                tags: r
                    .tags
                    .into_iter()
                    .map(|t| (t.tag_key, t.tag_value))
                    .collect(),
            })
        })();
        let result = match input {
            Ok(input) => self.kms.create_key(&creds, input).await,
            Err(e) => self.kms.refuse(&creds, "CreateKey", e).await,
        };
        reply(
            &self.kms,
            &creds,
            result.map(|k| pb::CreateKeyResponse {
                key_metadata: Some(convert::key_metadata(&k)),
            }),
        )
    }

    async fn describe_key(
        &self,
        request: Request<pb::DescribeKeyRequest>,
    ) -> Result<Response<pb::DescribeKeyResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .describe_key(&creds, &r.key_id, &r.grant_tokens)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|k| pb::DescribeKeyResponse {
                key_metadata: Some(convert::key_metadata(&k)),
            }),
        )
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.list_keys(&creds, r.limit, &r.marker).await;
        reply(
            &self.kms,
            &creds,
            result.map(|page| pb::ListKeysResponse {
                keys: page
                    .items
                    .into_iter()
                    .map(|id| pb::KeyListEntry {
                        resource: format!("key/{id}"),
                        key_id: id,
                    })
                    .collect(),
                truncated: page.next_marker.is_some(),
                next_marker: page.next_marker.unwrap_or_default(),
            }),
        )
    }

    async fn update_key_description(
        &self,
        request: Request<pb::UpdateKeyDescriptionRequest>,
    ) -> Result<Response<pb::UpdateKeyDescriptionResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .update_key_description(&creds, &r.key_id, &r.description)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::UpdateKeyDescriptionResponse {}),
        )
    }

    async fn enable_key(
        &self,
        request: Request<pb::EnableKeyRequest>,
    ) -> Result<Response<pb::EnableKeyResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        reply(
            &self.kms,
            &creds,
            self.kms
                .enable_key(&creds, &r.key_id)
                .await
                .map(|()| pb::EnableKeyResponse {}),
        )
    }

    async fn disable_key(
        &self,
        request: Request<pb::DisableKeyRequest>,
    ) -> Result<Response<pb::DisableKeyResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        reply(
            &self.kms,
            &creds,
            self.kms
                .disable_key(&creds, &r.key_id)
                .await
                .map(|()| pb::DisableKeyResponse {}),
        )
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> Result<Response<pb::ScheduleKeyDeletionResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .schedule_key_deletion(&creds, &r.key_id, r.pending_window_in_days)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|k| pb::ScheduleKeyDeletionResponse {
                key_id: k.key_id.clone(),
                deletion_date: k.deletion_date.and_then(timestamp),
                key_state: convert::key_state_out(k.state),
                pending_window_in_days: k.pending_window_days,
            }),
        )
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<pb::CancelKeyDeletionRequest>,
    ) -> Result<Response<pb::CancelKeyDeletionResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.cancel_key_deletion(&creds, &r.key_id).await;
        reply(
            &self.kms,
            &creds,
            result.map(|key_id| pb::CancelKeyDeletionResponse { key_id }),
        )
    }

    async fn create_alias(
        &self,
        request: Request<pb::CreateAliasRequest>,
    ) -> Result<Response<pb::CreateAliasResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .create_alias(&creds, &r.alias_name, &r.target_key_id)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::CreateAliasResponse {}),
        )
    }

    async fn update_alias(
        &self,
        request: Request<pb::UpdateAliasRequest>,
    ) -> Result<Response<pb::UpdateAliasResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .update_alias(&creds, &r.alias_name, &r.target_key_id)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::UpdateAliasResponse {}),
        )
    }

    async fn delete_alias(
        &self,
        request: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.delete_alias(&creds, &r.alias_name).await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::DeleteAliasResponse {}),
        )
    }

    async fn list_aliases(
        &self,
        request: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .list_aliases(&creds, &r.key_id, r.limit, &r.marker)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|page| pb::ListAliasesResponse {
                aliases: page
                    .items
                    .into_iter()
                    .map(|a| pb::AliasListEntry {
                        alias_name: a.alias_name,
                        target_key_id: a.key_id,
                        creation_date: timestamp(a.created),
                    })
                    .collect(),
                truncated: page.next_marker.is_some(),
                next_marker: page.next_marker.unwrap_or_default(),
            }),
        )
    }

    async fn get_key_policy(
        &self,
        request: Request<pb::GetKeyPolicyRequest>,
    ) -> Result<Response<pb::GetKeyPolicyResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .get_key_policy(&creds, &r.key_id, &r.policy_name)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|policy| pb::GetKeyPolicyResponse {
                policy,
                policy_name: "default".into(),
            }),
        )
    }

    async fn put_key_policy(
        &self,
        request: Request<pb::PutKeyPolicyRequest>,
    ) -> Result<Response<pb::PutKeyPolicyResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .put_key_policy(&creds, &r.key_id, &r.policy_name, &r.policy)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::PutKeyPolicyResponse {}),
        )
    }

    async fn create_grant(
        &self,
        request: Request<pb::CreateGrantRequest>,
    ) -> Result<Response<pb::CreateGrantResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let operations: Result<Vec<_>, _> = r
            .operations
            .iter()
            .map(|op| convert::grant_operation(*op))
            .collect();
        let result = match operations {
            Ok(operations) => {
                self.kms
                    .create_grant(
                        &creds,
                        CreateGrantInput {
                            key_id: r.key_id,
                            grantee: r.grantee_principal,
                            retiring: (!r.retiring_principal.is_empty())
                                .then_some(r.retiring_principal),
                            operations,
                            constraints: convert::constraints(r.constraints),
                            name: r.name,
                            grant_tokens: r.grant_tokens,
                        },
                    )
                    .await
            }
            Err(e) => self.kms.refuse(&creds, "CreateGrant", e).await,
        };
        reply(
            &self.kms,
            &creds,
            result.map(|g| pb::CreateGrantResponse {
                grant_token: g.token(),
                grant_id: g.grant_id,
            }),
        )
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .list_grants(
                &creds,
                &r.key_id,
                &r.grant_id,
                &r.grantee_principal,
                r.limit,
                &r.marker,
            )
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|page| pb::ListGrantsResponse {
                grants: page.items.iter().map(convert::grant_entry).collect(),
                truncated: page.next_marker.is_some(),
                next_marker: page.next_marker.unwrap_or_default(),
            }),
        )
    }

    async fn retire_grant(
        &self,
        request: Request<pb::RetireGrantRequest>,
    ) -> Result<Response<pb::RetireGrantResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .retire_grant(&creds, &r.grant_token, &r.key_id, &r.grant_id)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::RetireGrantResponse {}),
        )
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::RevokeGrantResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.revoke_grant(&creds, &r.key_id, &r.grant_id).await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::RevokeGrantResponse {}),
        )
    }

    async fn enable_key_rotation(
        &self,
        request: Request<pb::EnableKeyRotationRequest>,
    ) -> Result<Response<pb::EnableKeyRotationResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .enable_key_rotation(&creds, &r.key_id, r.rotation_period_in_days)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::EnableKeyRotationResponse {}),
        )
    }

    async fn disable_key_rotation(
        &self,
        request: Request<pb::DisableKeyRotationRequest>,
    ) -> Result<Response<pb::DisableKeyRotationResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.disable_key_rotation(&creds, &r.key_id).await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::DisableKeyRotationResponse {}),
        )
    }

    async fn get_key_rotation_status(
        &self,
        request: Request<pb::GetKeyRotationStatusRequest>,
    ) -> Result<Response<pb::GetKeyRotationStatusResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.get_key_rotation_status(&creds, &r.key_id).await;
        reply(
            &self.kms,
            &creds,
            result.map(|s| pb::GetKeyRotationStatusResponse {
                key_id: s.key_id,
                key_rotation_enabled: s.enabled,
                rotation_period_in_days: s.period_days,
                next_rotation_date: s.next_rotation.and_then(timestamp),
            }),
        )
    }

    async fn rotate_key_on_demand(
        &self,
        request: Request<pb::RotateKeyOnDemandRequest>,
    ) -> Result<Response<pb::RotateKeyOnDemandResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.rotate_key_on_demand(&creds, &r.key_id).await;
        reply(
            &self.kms,
            &creds,
            result.map(|(key_id, key_version)| pb::RotateKeyOnDemandResponse {
                key_id,
                key_version,
            }),
        )
    }

    async fn list_key_rotations(
        &self,
        request: Request<pb::ListKeyRotationsRequest>,
    ) -> Result<Response<pb::ListKeyRotationsResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .list_key_rotations(&creds, &r.key_id, r.limit, &r.marker)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|page| pb::ListKeyRotationsResponse {
                rotations: page
                    .items
                    .into_iter()
                    .map(|v| pb::KeyRotation {
                        rotation_type: convert::rotation_type(v.origin),
                        rotation_date: timestamp(v.created),
                        key_version: v.version,
                        key_id: v.key_id,
                    })
                    .collect(),
                truncated: page.next_marker.is_some(),
                next_marker: page.next_marker.unwrap_or_default(),
            }),
        )
    }

    async fn tag_resource(
        &self,
        request: Request<pb::TagResourceRequest>,
    ) -> Result<Response<pb::TagResourceResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let tags: Vec<(String, String)> = r
            .tags
            .into_iter()
            .map(|t| (t.tag_key, t.tag_value))
            .collect();
        let result = self.kms.tag_resource(&creds, &r.key_id, &tags).await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::TagResourceResponse {}),
        )
    }

    async fn untag_resource(
        &self,
        request: Request<pb::UntagResourceRequest>,
    ) -> Result<Response<pb::UntagResourceResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .untag_resource(&creds, &r.key_id, &r.tag_keys)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::UntagResourceResponse {}),
        )
    }

    async fn list_resource_tags(
        &self,
        request: Request<pb::ListResourceTagsRequest>,
    ) -> Result<Response<pb::ListResourceTagsResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .list_resource_tags(&creds, &r.key_id, r.limit, &r.marker)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|page| pb::ListResourceTagsResponse {
                tags: page
                    .items
                    .into_iter()
                    .map(|(tag_key, tag_value)| pb::Tag { tag_key, tag_value })
                    .collect(),
                truncated: page.next_marker.is_some(),
                next_marker: page.next_marker.unwrap_or_default(),
            }),
        )
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .encrypt(
                &creds,
                &r.key_id,
                &r.plaintext,
                &context(r.encryption_context),
                &r.grant_tokens,
            )
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|e| pb::EncryptResponse {
                ciphertext_blob: e.ciphertext_blob,
                key_id: e.key_id,
                key_version: e.key_version,
            }),
        )
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .decrypt(
                &creds,
                &r.ciphertext_blob,
                &context(r.encryption_context),
                &r.key_id,
                &r.grant_tokens,
            )
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|d| pb::DecryptResponse {
                key_id: d.key_id,
                plaintext: d.plaintext.to_vec(),
                key_version: d.key_version,
            }),
        )
    }

    async fn re_encrypt(
        &self,
        request: Request<pb::ReEncryptRequest>,
    ) -> Result<Response<pb::ReEncryptResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .re_encrypt(
                &creds,
                &r.ciphertext_blob,
                &context(r.source_encryption_context),
                &r.source_key_id,
                &r.destination_key_id,
                &context(r.destination_encryption_context),
                &r.grant_tokens,
            )
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|e| {
                let (source_key_id, source_key_version) = e.source.unwrap_or_default();
                pb::ReEncryptResponse {
                    ciphertext_blob: e.ciphertext_blob,
                    source_key_id,
                    key_id: e.key_id,
                    source_key_version,
                    key_version: e.key_version,
                }
            }),
        )
    }

    async fn generate_data_key(
        &self,
        request: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let length =
            data_key_spec(r.key_spec).and_then(|spec| data_key_length(spec, r.number_of_bytes));
        let result = match length {
            Ok(length) => {
                self.kms
                    .generate_data_key(
                        &creds,
                        &r.key_id,
                        &context(r.encryption_context),
                        length,
                        &r.grant_tokens,
                    )
                    .await
            }
            Err(e) => self.kms.refuse(&creds, "GenerateDataKey", e).await,
        };
        reply(
            &self.kms,
            &creds,
            result.map(|k| pb::GenerateDataKeyResponse {
                ciphertext_blob: k.ciphertext_blob,
                plaintext: k.plaintext.to_vec(),
                key_id: k.key_id,
                key_version: k.key_version,
            }),
        )
    }

    async fn generate_data_key_without_plaintext(
        &self,
        request: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let length =
            data_key_spec(r.key_spec).and_then(|spec| data_key_length(spec, r.number_of_bytes));
        let result = match length {
            Ok(length) => {
                self.kms
                    .generate_data_key_without_plaintext(
                        &creds,
                        &r.key_id,
                        &context(r.encryption_context),
                        length,
                        &r.grant_tokens,
                    )
                    .await
            }
            Err(e) => {
                self.kms
                    .refuse(&creds, "GenerateDataKeyWithoutPlaintext", e)
                    .await
            }
        };
        reply(
            &self.kms,
            &creds,
            result.map(|e| pb::GenerateDataKeyWithoutPlaintextResponse {
                ciphertext_blob: e.ciphertext_blob,
                key_id: e.key_id,
                key_version: e.key_version,
            }),
        )
    }

    async fn generate_mac(
        &self,
        request: Request<pb::GenerateMacRequest>,
    ) -> Result<Response<pb::GenerateMacResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = match convert::mac_algorithm(r.mac_algorithm) {
            Ok(alg) => self
                .kms
                .generate_mac(&creds, &r.key_id, &r.message, alg, &r.grant_tokens)
                .await
                .map(|(key_id, mac)| pb::GenerateMacResponse {
                    mac,
                    mac_algorithm: convert::mac_algorithm_out(alg),
                    key_id,
                }),
            Err(e) => self.kms.refuse(&creds, "GenerateMac", e).await,
        };
        reply(&self.kms, &creds, result)
    }

    async fn verify_mac(
        &self,
        request: Request<pb::VerifyMacRequest>,
    ) -> Result<Response<pb::VerifyMacResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = match convert::mac_algorithm(r.mac_algorithm) {
            Ok(alg) => self
                .kms
                .verify_mac(&creds, &r.key_id, &r.message, &r.mac, alg, &r.grant_tokens)
                .await
                .map(|key_id| pb::VerifyMacResponse {
                    key_id,
                    mac_valid: true,
                    mac_algorithm: convert::mac_algorithm_out(alg),
                }),
            Err(e) => self.kms.refuse(&creds, "VerifyMac", e).await,
        };
        reply(&self.kms, &creds, result)
    }

    async fn generate_random(
        &self,
        request: Request<pb::GenerateRandomRequest>,
    ) -> Result<Response<pb::GenerateRandomResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.generate_random(&creds, r.number_of_bytes).await;
        reply(
            &self.kms,
            &creds,
            result.map(|bytes| pb::GenerateRandomResponse {
                plaintext: bytes.to_vec(),
            }),
        )
    }
}
