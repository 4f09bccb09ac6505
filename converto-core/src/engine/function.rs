//! Converters from closures, for embedding programs whose conversion is a function.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::converter::{ConvertContext, ConvertError, ConvertRequest, Converter, Output, Route};

/// A converter made of a closure by [`converter_fn`].
pub struct FnConverter<F> {
    name: String,
    routes: Vec<Route>,
    f: Arc<F>,
}

impl<F> fmt::Debug for FnConverter<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnConverter")
            .field("name", &self.name)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// A converter from a function of the input's bytes to the output's bytes, serving `routes`.
///
/// The function runs on tokio's blocking pool (it may take its time) with the whole input in
/// memory, bounded by the engine's `max_input_bytes`; its one output is named
/// `output.TARGET`. A function cannot be interrupted: a conversion cancelled while it runs holds
/// its worker slot until it returns, then ends `cancelled`. A converter that streams, reports progress or writes several outputs
/// implements [`Converter`] instead.
///
/// ```
/// use converto_core::{Route, converter_fn};
///
/// # fn main() -> Result<(), converto_core::ParseFormatError> {
/// let upper = converter_fn("upper", [Route::parse("txt", "upper")?], |_request, input| {
///     Ok(input.to_ascii_uppercase().into())
/// });
/// # let _ = upper; Ok(()) }
/// ```
pub fn converter_fn<F>(
    name: impl Into<String>,
    routes: impl IntoIterator<Item = Route>,
    f: F,
) -> Arc<FnConverter<F>>
where
    F: Fn(&ConvertRequest, Bytes) -> Result<Bytes, ConvertError> + Send + Sync + 'static,
{
    Arc::new(FnConverter {
        name: name.into(),
        routes: routes.into_iter().collect(),
        f: Arc::new(f),
    })
}

#[async_trait]
impl<F> Converter for FnConverter<F>
where
    F: Fn(&ConvertRequest, Bytes) -> Result<Bytes, ConvertError> + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn routes(&self) -> Vec<Route> {
        self.routes.clone()
    }

    async fn convert(
        &self,
        request: &ConvertRequest,
        ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        let input = tokio::fs::read(ctx.input_path().await?).await?;
        let (f, req) = (Arc::clone(&self.f), request.clone());
        let output = tokio::task::spawn_blocking(move || f(&req, Bytes::from(input)))
            .await
            .map_err(|e| ConvertError::permanent("converter_crashed", e.to_string()))??;
        if ctx.is_cancelled() {
            return Err(ConvertError::Cancelled);
        }
        let target = request.target.clone();
        Ok(vec![Output::bytes(
            format!("output.{target}"),
            target,
            output,
        )])
    }
}
