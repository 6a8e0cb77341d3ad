//! What can go wrong talking to an S3 server, and whose fault it is.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::S3Config;
use crate::exit::ExitCode;

/// What went wrong talking to the bucket; each knows its exit code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum S3Error {
    /// No credentials, or a credentials file that cannot be used.
    #[error("credentials: {message}")]
    Credentials { message: String, missing: bool },
    #[error("bucket {bucket:?} at {endpoint}: the credentials were refused ({code}: {message})")]
    Refused {
        bucket: String,
        endpoint: String,
        code: String,
        message: String,
    },
    #[error("bucket {bucket:?} does not exist at {endpoint}")]
    NoSuchBucket { bucket: String, endpoint: String },
    #[error("{endpoint} unreachable: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("{op} {key}: {message}")]
    Request {
        op: &'static str,
        key: String,
        message: String,
        /// Worth another attempt (a server or network hiccup).
        transient: bool,
    },
    #[error("{key}: {message}")]
    Mismatch { key: String, message: String },
    #[error("object_lock_days: {message}")]
    ObjectLock { message: String },
}

impl S3Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            S3Error::Credentials { missing: true, .. } | S3Error::Refused { .. } => ExitCode::Key,
            S3Error::Credentials { missing: false, .. }
            | S3Error::NoSuchBucket { .. }
            | S3Error::ObjectLock { .. } => ExitCode::Usage,
            S3Error::Unreachable { .. } | S3Error::Request { .. } | S3Error::Mismatch { .. } => {
                ExitCode::Failed
            }
        }
    }

    pub fn hint(&self) -> Option<String> {
        Some(match self {
            S3Error::Credentials { .. } => "give `credentials = \"/etc/coffer/s3-credentials\"` (an AWS shared-credentials file, mode 0600) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            S3Error::Refused { .. } => "check the access key and secret (and the clock: signatures are refused when it is off by 15 minutes), and that the key may use this bucket".into(),
            S3Error::NoSuchBucket { .. } => "create the bucket, or correct `bucket` (and `endpoint`, `region`) in the configuration".into(),
            S3Error::ObjectLock { .. } => "create the bucket with Object Lock enabled on a server that supports it, or remove object_lock_days".into(),
            S3Error::Unreachable { .. } | S3Error::Request { .. } | S3Error::Mismatch { .. } => {
                return None
            }
        })
    }

    pub(super) fn transient(&self) -> bool {
        matches!(
            self,
            S3Error::Unreachable { .. }
                | S3Error::Request {
                    transient: true,
                    ..
                }
        )
    }
}

pub(super) type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

pub(super) fn classify<E>(
    cfg: &S3Config,
    op: &'static str,
    key: &str,
    e: &SdkError<E, HttpResponse>,
) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::DispatchFailure(d) => {
            let message = match d.as_connector_error() {
                Some(c) => root_cause(c),
                None => root_cause(e),
            };
            S3Error::Unreachable {
                endpoint: cfg.endpoint.clone(),
                message,
            }
        }
        SdkError::TimeoutError(_) => S3Error::Unreachable {
            endpoint: cfg.endpoint.clone(),
            message: format!("no answer within {}s", cfg.timeout.as_secs()),
        },
        _ => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let code = e.code().unwrap_or_default().to_owned();
            let message = one_line(e.message().unwrap_or_default());
            if code == "NoSuchBucket" {
                return S3Error::NoSuchBucket {
                    bucket: cfg.bucket.clone(),
                    endpoint: cfg.endpoint.clone(),
                };
            }
            let refused = [
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "InvalidToken",
                "ExpiredToken",
                "InvalidSecurity",
                "AuthorizationHeaderMalformed",
            ];
            if refused.contains(&code.as_str()) || status == Some(403) {
                return S3Error::Refused {
                    bucket: cfg.bucket.clone(),
                    endpoint: cfg.endpoint.clone(),
                    code: if code.is_empty() {
                        "HTTP 403".into()
                    } else {
                        code
                    },
                    message: format!("{op} {key}: {message}"),
                };
            }
            let transient = status.is_some_and(|s| s >= 500 || s == 429)
                || matches!(
                    code.as_str(),
                    "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"
                );
            let said = match (code.is_empty(), message.is_empty()) {
                (false, false) => format!("{code}: {message}"),
                (false, true) => code,
                (true, _) => root_cause(e),
            };
            S3Error::Request {
                op,
                key: key.to_owned(),
                message: match status {
                    Some(s) => format!("{said} (HTTP {s})"),
                    None => said,
                },
                transient,
            }
        }
    }
}

/// The innermost cause of an error, on one line: "Connection refused (os
/// error 111)" rather than every layer's wrapping (and no Debug dumps).
pub(super) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
