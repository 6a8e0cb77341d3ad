//! Reaching the server: the endpoint rules, credentials, and the client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::Client;

use super::{Inner, S3Config, S3Error};

/// Whether plain HTTP may be used to reach `host`: only on this machine.
pub fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(a) => a.is_loopback(),
        url::Host::Ipv6(a) => a.is_loopback(),
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
    }
}

/// Whether `endpoint` is on this machine: then it is addressed path-style,
/// as virtual-hosted style would look `<bucket>.localhost` up in DNS and so
/// leave the machine.
fn on_loopback(endpoint: &str) -> bool {
    url::Url::parse(endpoint)
        .ok()
        .is_some_and(|u| u.host().is_some_and(|h| is_loopback(&h)))
}

/// Checks an endpoint: HTTPS, or HTTP to a loopback address.
pub fn check_endpoint(endpoint: &str) -> std::result::Result<(), String> {
    let url = url::Url::parse(endpoint).map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
    let host = url
        .host()
        .ok_or_else(|| format!("endpoint {endpoint:?} names no host"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&host) => Ok(()),
        "http" => Err(format!(
            "endpoint {endpoint:?}: plain http is allowed only to a loopback address; use https"
        )),
        s => Err(format!("endpoint {endpoint:?}: unsupported scheme {s:?}")),
    }
}

/// Static credentials: (access key id, secret, session token).
pub(super) struct Keys {
    pub(super) id: String,
    pub(super) secret: zeroize::Zeroizing<String>,
    pub(super) token: Option<zeroize::Zeroizing<String>>,
}

pub(super) fn credentials(cfg: &S3Config) -> std::result::Result<Keys, S3Error> {
    let profile = cfg
        .profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok())
        .unwrap_or_else(|| "default".into());
    if let Some(path) = &cfg.credentials {
        return credentials_file(path, &profile);
    }
    if let (Ok(id), Ok(secret)) = (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        return Ok(Keys {
            id,
            secret: secret.into(),
            token: std::env::var("AWS_SESSION_TOKEN").ok().map(Into::into),
        });
    }
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".aws/credentials")));
    match path {
        Some(p) if p.exists() => credentials_file(&p, &profile),
        _ => Err(S3Error::Credentials {
            message: "none given: no `credentials` file in the store's configuration, no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, no ~/.aws/credentials".into(),
            missing: true,
        }),
    }
}

pub(super) fn credentials_file(path: &Path, profile: &str) -> std::result::Result<Keys, S3Error> {
    let bad = |message: String| S3Error::Credentials {
        message: format!("{}: {message}", path.display()),
        missing: false,
    };
    // The same ownership and mode rules as every other secret file.
    let text = crate::fsutil::read_secret(path).map_err(|e| bad(crate::cli_chain(&e)))?;
    let values =
        parse_profile(&text, profile).ok_or_else(|| bad(format!("no [{profile}] profile")))?;
    let id = values
        .get("aws_access_key_id")
        .ok_or_else(|| bad(format!("[{profile}] has no aws_access_key_id")))?;
    let secret = values
        .get("aws_secret_access_key")
        .ok_or_else(|| bad(format!("[{profile}] has no aws_secret_access_key")))?;
    Ok(Keys {
        id: id.clone(),
        secret: secret.clone().into(),
        token: values.get("aws_session_token").map(|t| t.clone().into()),
    })
}

/// One profile's `key = value` lines of an INI credentials file.
pub(super) fn parse_profile(text: &str, profile: &str) -> Option<BTreeMap<String, String>> {
    let mut current: Option<String> = None;
    let mut found = None::<BTreeMap<String, String>>;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            let section = section.strip_prefix("profile ").unwrap_or(section).trim();
            current = Some(section.to_owned());
            if section == profile {
                found.get_or_insert_with(BTreeMap::new);
            }
            continue;
        }
        if current.as_deref() != Some(profile) {
            continue;
        }
        if let (Some(map), Some((k, v))) = (found.as_mut(), line.split_once('=')) {
            map.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    found
}

pub(super) fn connect(cfg: &S3Config) -> std::result::Result<Inner, S3Error> {
    let keys = credentials(cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("coffer-s3")
        .enable_all()
        .build()
        .map_err(|e| S3Error::Request {
            op: "start",
            key: String::new(),
            message: format!("cannot start the S3 runtime: {e}"),
            transient: false,
        })?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let creds = Credentials::new(
        keys.id,
        keys.secret.as_str(),
        keys.token.as_ref().map(|t| t.as_str().to_owned()),
        None,
        "coffer",
    );
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .endpoint_url(cfg.endpoint.clone())
        .force_path_style(cfg.path_style || on_loopback(&cfg.endpoint))
        .credentials_provider(creds)
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(cfg.retries.max(1)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
                .operation_attempt_timeout(cfg.timeout)
                .build(),
        )
        // Content-MD5 is sent and checked per part; the newer checksum
        // headers are not understood by every S3-compatible server.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Ok(Inner {
        rt,
        client: Client::from_conf(conf),
    })
}
