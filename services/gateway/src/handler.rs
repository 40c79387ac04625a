use std::future::Future;
use std::pin::pin;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use catalog::Product;
use chrono::{SecondsFormat, Utc};
use futures_util::future::{select, Either};
use futures_util::TryFutureExt;
use serde::Serialize;
use service_runtime::ApiError;

use crate::metrics::UpstreamMetrics;
use crate::policy::Policy;
use crate::upstream::{Recommendations, UpstreamError, Upstreams};

pub struct Gateway {
    pub upstreams: Upstreams,
    pub metrics: UpstreamMetrics,
    pub policy: Policy,
}

#[derive(Serialize)]
struct ProductDetails {
    product: Product,
    recommendations: Vec<Product>,
    degraded_mode: bool,
    timestamp: String,
}

/// `GET /product-details/{id}`: the product and its recommendations, fetched concurrently.
/// No product, no page; what happens without recommendations is the policy's call.
pub async fn product_details(
    gateway: web::Data<Gateway>,
    client: web::Data<awc::Client>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = catalog::parse_id(&id).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let product = gateway
        .upstreams
        .product(
            &client,
            &gateway.metrics,
            id,
            gateway.policy.product_timeout(),
        )
        .map_err(|err| product_error(id, err));
    let recommendations = gateway
        .policy
        .recommendations(&gateway.upstreams, &client, &gateway.metrics, id)
        .map_err(|err| {
            tracing::warn!(product_id = id, error = %err, "recommendations failed; failing the request");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("Failed to get recommendations: {err}"))
        });
    let (product, recommendations) = product_first(product, recommendations).await?;
    Ok(HttpResponse::Ok().json(ProductDetails {
        product,
        recommendations: recommendations.products,
        degraded_mode: recommendations.degraded,
        timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
    }))
}

/// Runs both calls at once. A product failure answers at once, whatever recommendations is
/// doing; a recommendations failure waits for the product, whose own error (such as 404 for an
/// unknown id) takes precedence.
async fn product_first<P, R>(
    product: P,
    recommendations: R,
) -> Result<(Product, Recommendations), ApiError>
where
    P: Future<Output = Result<Product, ApiError>>,
    R: Future<Output = Result<Recommendations, ApiError>>,
{
    match select(pin!(product), pin!(recommendations)).await {
        Either::Left((product, recommendations)) => {
            let product = product?;
            Ok((product, recommendations.await?))
        }
        Either::Right((recommendations, product)) => {
            let product = product.await?;
            Ok((product, recommendations?))
        }
    }
}

fn product_error(id: u32, err: UpstreamError) -> ApiError {
    tracing::warn!(product_id = id, error = %err, "product lookup failed");
    let status = match &err {
        UpstreamError::Status(_, s) if *s == StatusCode::NOT_FOUND => {
            return ApiError::not_found(format!("product {id} not found"));
        }
        UpstreamError::Status(_, s) if *s == StatusCode::BAD_REQUEST => StatusCode::BAD_REQUEST,
        UpstreamError::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
        UpstreamError::Connect(..) => StatusCode::SERVICE_UNAVAILABLE,
        UpstreamError::Status(..) | UpstreamError::Body(..) => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, format!("Failed to get product details: {err}"))
}
