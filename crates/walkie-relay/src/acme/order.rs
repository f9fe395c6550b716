//! One ACME order for the relay's domain (RFC 8555 section 7.4): the account (the stored
//! one, or a new one with the contact), a new order, the HTTP-01 challenge answered by the
//! responder, finalization with a new key and CSR (made by instant-acme with rcgen), and the
//! issued chain. Errors say what the ACME server said, and for a failed validation where it
//! looked.

use std::path::Path;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, Order,
    OrderStatus, RetryPolicy,
};
use tracing::{info, warn};

use super::client::Https;
use super::http01::Responder;
use super::{AcmeConfig, AcmeError, stored};

/// Authorizations read from one order (an order for one name has one).
const MAX_AUTHORIZATIONS: usize = 4;

/// A chain and its key, PEM, as issued.
pub(crate) struct Obtained {
    /// The chain, leaf first.
    pub chain_pem: String,
    /// The key.
    pub key_pem: String,
}

fn server(what: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
    move |source| AcmeError::Server { what, source }
}

/// Whether `e` is the ACME problem `urn:ietf:params:acme:error:NAME`.
fn is_problem(e: &instant_acme::Error, name: &str) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if p.r#type.as_deref().and_then(|t| t.strip_prefix("urn:ietf:params:acme:error:")) == Some(name))
}

/// Runs one order to its end. Not bounded in time here: the caller caps it.
pub(crate) async fn obtain(
    config: &AcmeConfig,
    dir: &Path,
    https: &Https,
    responder: &Responder,
) -> Result<Obtained, AcmeError> {
    let identifiers = [Identifier::Dns(config.domain.clone())];
    let account = open_account(config, dir, https, false).await?;
    let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
        // The ACME server forgot the account (a test server restarted, an account closed).
        Err(e) if is_problem(&e, "accountDoesNotExist") => {
            warn!("the ACME server does not know the stored account; making a new one");
            open_account(config, dir, https, true)
                .await?
                .new_order(&NewOrder::new(&identifiers))
                .await
                .map_err(server("cannot place an order"))?
        }
        placed => placed.map_err(server("cannot place an order"))?,
    };
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(config.timeout);
    // Each answered until the order ends (these guards drop).
    let mut answering = Vec::new();
    let mut authorizations = order.authorizations();
    let mut seen = 0;
    while let Some(authz) = authorizations.next().await {
        seen += 1;
        if seen > MAX_AUTHORIZATIONS {
            return Err(AcmeError::Order(format!(
                "the order has more than {MAX_AUTHORIZATIONS} authorizations for one name"
            )));
        }
        let mut authz = authz.map_err(server("cannot read the order's authorization"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(AcmeError::Order(format!(
                    "the authorization for {} is {status:?}",
                    config.domain
                )));
            }
        }
        let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
            AcmeError::Order(format!(
                "the ACME server offers no HTTP-01 challenge for {}",
                config.domain
            ))
        })?;
        let key_authorization = challenge.key_authorization();
        answering.push(responder.answer(&challenge.token, key_authorization.as_str())?);
        challenge
            .set_ready()
            .await
            .map_err(server("cannot start the challenge"))?;
    }
    match order.poll_ready(&retries).await {
        Ok(OrderStatus::Ready) => {}
        Ok(status) => {
            return Err(validation_failed(
                &mut order,
                config,
                responder,
                format!("the order is {status:?}"),
            )
            .await);
        }
        Err(e) => {
            return Err(validation_failed(&mut order, config, responder, e.to_string()).await);
        }
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(server("cannot finalize the order"))?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .map_err(server("cannot download the certificate"))?;
    drop(answering);
    Ok(Obtained { chain_pem, key_pem })
}

/// The error of an order whose challenge did not pass, with the ACME server's reason.
async fn validation_failed(
    order: &mut Order,
    config: &AcmeConfig,
    responder: &Responder,
    outcome: String,
) -> AcmeError {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    let mut seen = 0;
    while let Some(Ok(mut authz)) = authorizations.next().await {
        seen += 1;
        if seen > MAX_AUTHORIZATIONS {
            break;
        }
        if let Ok(state) = authz.refresh().await {
            reasons.extend(
                state
                    .challenges
                    .iter()
                    .filter(|c| c.r#type == ChallengeType::Http01)
                    .filter_map(|c| c.error.as_ref())
                    .map(|p| p.to_string()),
            );
        }
    }
    let reason = if reasons.is_empty() {
        outcome
    } else {
        reasons.join("; ")
    };
    AcmeError::Validation {
        domain: config.domain.clone(),
        reason,
        listening: responder.addr(),
    }
}

/// The stored account of this ACME directory, or a new one (stored) when there is none or
/// `fresh` asks for one.
async fn open_account(
    config: &AcmeConfig,
    dir: &Path,
    https: &Https,
    fresh: bool,
) -> Result<Account, AcmeError> {
    let stored = if fresh {
        None
    } else {
        stored::load_account(dir, &config.directory)
    };
    if let Some(credentials) = stored {
        return Account::builder_with_http(Box::new(https.clone()))
            .from_credentials(credentials)
            .await
            .map_err(server("cannot read the ACME directory"));
    }
    let contact = format!("mailto:{}", config.contact);
    let (account, credentials) = Account::builder_with_http(Box::new(https.clone()))
        .create(
            &NewAccount {
                contact: &[&contact],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .map_err(server("cannot make an account"))?;
    stored::save_account(dir, &config.directory, credentials)?;
    info!(directory = %config.directory, "made an ACME account");
    Ok(account)
}
