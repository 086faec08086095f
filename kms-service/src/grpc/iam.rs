//! `iam.v1.IdentityService` over [`Kms`].

use std::sync::Arc;

use lockbox_proto::iam::v1 as pb;
use lockbox_proto::iam::v1::identity_service_server::IdentityService;
use tonic::{Request, Response, Status};

use super::convert::timestamp;
use super::{credentials, reply};
use crate::error::KmsError;
use crate::identity::{PrincipalKind, PrincipalRecord};
use crate::service::Kms;

pub struct IdentityGrpc {
    kms: Arc<Kms>,
}

impl IdentityGrpc {
    pub fn new(kms: Arc<Kms>) -> Self {
        IdentityGrpc { kms }
    }
}

fn user(r: &PrincipalRecord) -> pb::User {
    pb::User {
        principal: r.principal.clone(),
        user_name: r.name().to_string(),
        kind: match r.kind {
            PrincipalKind::User => pb::PrincipalKind::User,
            PrincipalKind::Service => pb::PrincipalKind::Service,
        }
        .into(),
        create_date: timestamp(r.created),
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityGrpc {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let kind = match pb::PrincipalKind::try_from(r.kind) {
            Ok(pb::PrincipalKind::Service) => Ok(Some(PrincipalKind::Service)),
            Ok(pb::PrincipalKind::User) => Ok(Some(PrincipalKind::User)),
            Ok(pb::PrincipalKind::Unspecified) => Ok(None),
            Err(_) => Err(KmsError::validation(format!(
                "kind {} is not a known PrincipalKind",
                r.kind
            ))),
        };
        let result = match kind {
            Ok(kind) => self.kms.create_user(&creds, &r.user_name, kind).await,
            Err(e) => self.kms.refuse(&creds, "CreateUser", e).await,
        };
        reply(
            &self.kms,
            &creds,
            result.map(|u| pb::CreateUserResponse {
                user: Some(user(&u)),
            }),
        )
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.get_user(&creds, &r.user_name).await;
        reply(
            &self.kms,
            &creds,
            result.map(|u| pb::GetUserResponse {
                user: Some(user(&u)),
                attached_policies: u.attached.iter().cloned().collect(),
                inline_policies: u.inline.keys().cloned().collect(),
            }),
        )
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.list_users(&creds, r.limit, &r.marker).await;
        reply(
            &self.kms,
            &creds,
            result.map(|page| pb::ListUsersResponse {
                users: page.items.iter().map(user).collect(),
                truncated: page.next_marker.is_some(),
                next_marker: page.next_marker.unwrap_or_default(),
            }),
        )
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.delete_user(&creds, &r.user_name).await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::DeleteUserResponse {}),
        )
    }

    async fn create_access_token(
        &self,
        request: Request<pb::CreateAccessTokenRequest>,
    ) -> Result<Response<pb::CreateAccessTokenResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.create_access_token(&creds, &r.user_name).await;
        reply(
            &self.kms,
            &creds,
            result.map(|t| pb::CreateAccessTokenResponse {
                token_id: t.token_id,
                token: t.token.to_string(),
                principal: t.principal,
            }),
        )
    }

    async fn list_access_tokens(
        &self,
        request: Request<pb::ListAccessTokensRequest>,
    ) -> Result<Response<pb::ListAccessTokensResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.list_access_tokens(&creds, &r.user_name).await;
        reply(
            &self.kms,
            &creds,
            result.map(|tokens| pb::ListAccessTokensResponse {
                tokens: tokens
                    .into_iter()
                    .map(|t| pb::AccessTokenMetadata {
                        token_id: t.token_id,
                        principal: t.principal,
                        create_date: timestamp(t.created),
                        revoked: t.revoked.is_some(),
                    })
                    .collect(),
            }),
        )
    }

    async fn delete_access_token(
        &self,
        request: Request<pb::DeleteAccessTokenRequest>,
    ) -> Result<Response<pb::DeleteAccessTokenResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .delete_access_token(&creds, &r.user_name, &r.token_id)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::DeleteAccessTokenResponse {}),
        )
    }

    async fn attach_user_policy(
        &self,
        request: Request<pb::AttachUserPolicyRequest>,
    ) -> Result<Response<pb::AttachUserPolicyResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .attach_user_policy(&creds, &r.user_name, &r.policy_name)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::AttachUserPolicyResponse {}),
        )
    }

    async fn detach_user_policy(
        &self,
        request: Request<pb::DetachUserPolicyRequest>,
    ) -> Result<Response<pb::DetachUserPolicyResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .detach_user_policy(&creds, &r.user_name, &r.policy_name)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::DetachUserPolicyResponse {}),
        )
    }

    async fn put_user_policy(
        &self,
        request: Request<pb::PutUserPolicyRequest>,
    ) -> Result<Response<pb::PutUserPolicyResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .put_user_policy(&creds, &r.user_name, &r.policy_name, &r.policy_document)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::PutUserPolicyResponse {}),
        )
    }

    async fn delete_user_policy(
        &self,
        request: Request<pb::DeleteUserPolicyRequest>,
    ) -> Result<Response<pb::DeleteUserPolicyResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self
            .kms
            .delete_user_policy(&creds, &r.user_name, &r.policy_name)
            .await;
        reply(
            &self.kms,
            &creds,
            result.map(|()| pb::DeleteUserPolicyResponse {}),
        )
    }

    async fn list_user_policies(
        &self,
        request: Request<pb::ListUserPoliciesRequest>,
    ) -> Result<Response<pb::ListUserPoliciesResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let result = self.kms.list_user_policies(&creds, &r.user_name).await;
        reply(
            &self.kms,
            &creds,
            result.map(|u| pb::ListUserPoliciesResponse {
                attached_policies: u.attached.iter().cloned().collect(),
                inline_policies: u.inline.keys().cloned().collect(),
            }),
        )
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let creds = credentials(&request);
        let result = self.kms.list_policies(&creds).await;
        reply(
            &self.kms,
            &creds,
            result.map(|policies| pb::ListPoliciesResponse {
                policies: policies
                    .into_iter()
                    .map(|(name, doc)| pb::ManagedPolicy {
                        policy_name: name.to_string(),
                        policy_document: doc.to_string(),
                    })
                    .collect(),
            }),
        )
    }

    async fn get_caller_identity(
        &self,
        request: Request<pb::GetCallerIdentityRequest>,
    ) -> Result<Response<pb::GetCallerIdentityResponse>, Status> {
        let creds = credentials(&request);
        let result = self.kms.get_caller_identity(&creds).await;
        reply(
            &self.kms,
            &creds,
            result.map(|c| pb::GetCallerIdentityResponse {
                principal: c.principal,
                token_id: c.token_id,
                via_service: c.via_service.unwrap_or_default(),
            }),
        )
    }

    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let creds = credentials(&request);
        let r = request.into_inner();
        let questions: Vec<(String, String)> = r
            .questions
            .into_iter()
            .map(|q| (q.action, q.resource))
            .collect();
        let result = self.kms.authorize_questions(&creds, &questions).await;
        reply(
            &self.kms,
            &creds,
            result.map(|(principal, answers)| pb::AuthorizeResponse {
                principal,
                answers: answers
                    .into_iter()
                    .map(|a| pb::AuthorizationAnswer {
                        decision: if a.allowed {
                            pb::Decision::Allow
                        } else if a.explicit_deny {
                            pb::Decision::ExplicitDeny
                        } else {
                            pb::Decision::ImplicitDeny
                        }
                        .into(),
                        action: a.action,
                        resource: a.resource,
                        message: a.message,
                    })
                    .collect(),
            }),
        )
    }
}
