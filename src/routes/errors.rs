//! The one error page every 4xx/5xx goes through, and the extractor error handlers.

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpRequest, HttpResponse, error};
use serde::Serialize;

use crate::error::{AppError, ErrorMessage};
use crate::routes::page::Layout;
use crate::session::{StoreTrouble, watch_store};
use crate::state::State;

#[derive(Serialize)]
struct ErrorPage {
    status: u16,
    title: String,
    message: String,
}

fn default_message(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "The request was not understood.",
        403 => "You are not allowed to do that.",
        404 => "The page you asked for does not exist.",
        405 => "That action is not supported here.",
        413 | 414 | 431 => "The request was too large.",
        429 => "Too many requests. Please wait a moment and try again.",
        503 => "The shop is temporarily unavailable. Please try again in a moment.",
        s if s >= 500 => "Something went wrong on our side. Please try again.",
        _ => "The request could not be completed.",
    }
}

/// Wraps bare error responses (no body type yet) in `error.html`. JSON and already-rendered
/// pages pass through untouched; headers such as `Set-Cookie` and `Location` are kept.
pub fn render_error_page<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    if res.headers().contains_key(header::CONTENT_TYPE) {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let message = res
        .response()
        .extensions()
        .get::<ErrorMessage>()
        .map(|m| m.0.clone())
        .unwrap_or_else(|| default_message(status).to_owned());
    let html = render(res.request(), status, &message);
    let (req, mut response) = res.into_parts();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let response = response.set_body(EitherBody::<B, BoxBody>::right(BoxBody::new(html)));
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(
        req, response,
    )))
}

fn render(req: &HttpRequest, status: StatusCode, message: &str) -> String {
    let Some(state) = req.app_data::<State>() else {
        return message.to_owned();
    };
    let session = crate::session::TypedSession::of(req);
    render_page(
        &state.tera,
        status,
        message,
        &Layout::for_error_page(&session),
    )
}

fn render_page(tera: &tera::Tera, status: StatusCode, message: &str, layout: &Layout) -> String {
    let page = ErrorPage {
        status: status.as_u16(),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        message: message.to_owned(),
    };
    let mut ctx = match tera::Context::from_serialize(&page) {
        Ok(ctx) => ctx,
        Err(_) => return message.to_owned(),
    };
    ctx.insert("layout", layout);
    tera.render("error.html", &ctx).unwrap_or_else(|e| {
        tracing::error!(error = ?e, "Rendering the error page failed");
        message.to_owned()
    })
}

pub async fn not_found() -> Result<HttpResponse, AppError> {
    Err(AppError::NotFound(
        "The page you asked for does not exist.".into(),
    ))
}

pub fn bad_query(err: error::QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    AppError::BadRequest(format!("The address has an invalid query: {err}")).into()
}

/// A path segment of the wrong shape (`/cart/items/abc/remove`) names nothing: 404.
pub fn bad_path(_err: error::PathError, _req: &HttpRequest) -> actix_web::Error {
    AppError::NotFound("The page you asked for does not exist.".into()).into()
}

pub fn bad_form(err: error::UrlencodedError, _req: &HttpRequest) -> actix_web::Error {
    match err {
        error::UrlencodedError::Overflow { .. } => {
            let mut response = HttpResponse::PayloadTooLarge().finish();
            response
                .extensions_mut()
                .insert(ErrorMessage("The form is too large.".into()));
            error::InternalError::from_response("form too large", response).into()
        }
        other => AppError::BadRequest(format!("The form could not be read: {other}")).into(),
    }
}

/// Longest query string accepted; anything longer is an attack or a bug (414).
const MAX_QUERY_LEN: usize = 8 * 1024;

/// Rejects oversized query strings before any handler or session load runs.
pub async fn limit_query_length(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<BoxBody, impl MessageBody>>, actix_web::Error> {
    if req.query_string().len() > MAX_QUERY_LEN {
        let mut response = HttpResponse::build(StatusCode::URI_TOO_LONG).finish();
        response
            .extensions_mut()
            .insert(ErrorMessage("The address is too long.".into()));
        return Ok(req.into_response(response).map_into_left_body());
    }
    next.call(req).await.map(|r| r.map_into_right_body())
}

/// An error page rendered ahead of time, for errors that escape the handlers as `Err` (a
/// session that could not be loaded or saved): actix turns those into responses itself.
#[derive(Debug)]
struct RenderedError {
    status: StatusCode,
    html: String,
}

impl std::fmt::Display for RenderedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status)
    }
}

impl error::ResponseError for RenderedError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        response
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((header::RETRY_AFTER, "5"));
        }
        response.body(self.html.clone())
    }
}

/// Renders errors from inner middleware (the session store) with the shared error page;
/// Postgres being unreachable becomes a 503.
pub async fn errors_to_responses(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req.app_data::<State>().cloned();
    match watch_store(next.call(req)).await {
        (Ok(response), _) => Ok(response),
        (Err(err), trouble) => {
            let (status, message) = match trouble {
                StoreTrouble::Outage => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    default_message(StatusCode::SERVICE_UNAVAILABLE),
                ),
                StoreTrouble::Conflict => (
                    StatusCode::CONFLICT,
                    "Another tab changed the same thing at the same moment, so this change was not saved. Please reload the page and try again.",
                ),
                StoreTrouble::None => {
                    let status = err.as_response_error().status_code();
                    (status, default_message(status))
                }
            };
            let html = match &state {
                Some(state) => render_page(&state.tera, status, message, &Layout::anonymous()),
                None => message.to_owned(),
            };
            Err(RenderedError { status, html }.into())
        }
    }
}
