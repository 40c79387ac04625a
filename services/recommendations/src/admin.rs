//! `/admin/fault`: read or switch the fault at runtime, with `Authorization: Bearer $ADMIN_TOKEN`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use service_runtime::{ApiError, MAX_JSON_BODY};
use subtle::ConstantTimeEq;

use crate::AppState;
use fault::{Fault, FaultUpdate};

/// The fault in force, and whose it is.
#[derive(Serialize)]
struct FaultAnswer<'a> {
    #[serde(flatten)]
    fault: Fault,
    /// POD_NAME: which replica answered (null when unset).
    pod: Option<&'a str>,
}

fn answer(state: &AppState, fault: Fault) -> HttpResponse {
    HttpResponse::Ok().json(FaultAnswer {
        fault,
        pod: state.pod_name.as_deref(),
    })
}

fn authorize(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    // Without a configured token the endpoint does not exist.
    let Some(token) = state.admin_token.as_deref() else {
        return Err(ApiError::not_found(
            "admin endpoint is disabled (no ADMIN_TOKEN set)",
        ));
    };
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token",
        )),
        // Constant time: how long a refusal takes does not tell how much of a guess was right.
        Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::FORBIDDEN, "wrong bearer token")),
    }
}

pub(crate) async fn show(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    Ok(answer(&state, state.fault()))
}

pub(crate) async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // The caller is authorized before a byte of what it sent is read (a `Bytes` extractor
    // would take up to 256 KiB, decompressed, from anyone), then the services' JSON limit.
    authorize(&state, &req)?;
    let body = payload
        .to_bytes_limited(MAX_JSON_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {MAX_JSON_BODY} bytes"),
            )
        })?
        .map_err(|err| ApiError::bad_request(err.to_string()))?;
    let update: FaultUpdate =
        serde_json::from_slice(&body).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let mut fault = state.fault.write().unwrap_or_else(|e| e.into_inner());
    let next = fault
        .updated(update)
        .map_err(|err| ApiError::bad_request(err.to_string()))?;
    tracing::info!(from = ?fault.mode, to = ?next.mode, "fault switched");
    *fault = next;
    Ok(answer(&state, next))
}
