//! Custom operators and sinks, registered by name before the runtime
//! starts; `type = "custom"` stages of TOML pipelines use them by that name.
//!
//! ```no_run
//! use millrace::pipeline::{Emitter, Event, Operator, OperatorError, Registry};
//! use millrace::{config::Config, Runtime};
//!
//! struct Upper;
//! impl Operator for Upper {
//!     fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
//!         let text = event.value_str().ok_or_else(|| OperatorError::permanent("not UTF-8"))?;
//!         out.emit(event.with_value(text.to_uppercase()));
//!         Ok(())
//!     }
//! }
//!
//! let mut registry = Registry::new();
//! registry.operator("upper", |_params| Ok(Box::new(Upper)));
//! let config = Config::from_file("pipelines.toml".as_ref()).unwrap();
//! let runtime = Runtime::start_with(config, registry).unwrap();
//! # drop(runtime);
//! ```

use super::config::{OperatorConfig, PipelineConfig, SinkConfig};
use super::{Operator, Sink};
use crate::actors::pipeline::OperatorBuilder;
use crate::error::StartError;
use std::collections::HashMap;
use std::sync::Arc;

/// Makes an operator instance from the stage's `params` (one instance per
/// source partition, so instances never share state).
pub type OperatorFactory =
    Arc<dyn Fn(&serde_json::Value) -> Result<Box<dyn Operator>, String> + Send + Sync + 'static>;

/// Makes a sink from the stage's `params` (one per pipeline).
pub type SinkFactory =
    Arc<dyn Fn(&serde_json::Value) -> Result<Box<dyn Sink>, String> + Send + Sync + 'static>;

/// Named custom operators and sinks.
#[derive(Clone, Default)]
pub struct Registry {
    operators: HashMap<String, OperatorFactory>,
    sinks: HashMap<String, SinkFactory>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers an operator factory as `name` (replacing any earlier one).
    pub fn operator<F>(&mut self, name: impl Into<String>, factory: F) -> &mut Registry
    where
        F: Fn(&serde_json::Value) -> Result<Box<dyn Operator>, String> + Send + Sync + 'static,
    {
        self.operators.insert(name.into(), Arc::new(factory));
        self
    }

    /// Registers a sink factory as `name` (replacing any earlier one).
    pub fn sink<F>(&mut self, name: impl Into<String>, factory: F) -> &mut Registry
    where
        F: Fn(&serde_json::Value) -> Result<Box<dyn Sink>, String> + Send + Sync + 'static,
    {
        self.sinks.insert(name.into(), Arc::new(factory));
        self
    }

    /// One builder per operator of `pipeline`, and whether any operator
    /// keeps state. Each is tried once here, so a bad stage fails the start
    /// rather than the first assignment.
    pub(crate) fn operator_builders(
        &self,
        pipeline: &PipelineConfig,
    ) -> Result<(Vec<OperatorBuilder>, bool), StartError> {
        let mut stateful = false;
        let builders = pipeline
            .operators
            .iter()
            .enumerate()
            .map(|(index, operator)| {
                let error = |message: String| StartError::Pipeline {
                    pipeline: pipeline.name.clone(),
                    stage: format!("operator[{index}]"),
                    message,
                };
                let builder = self.operator_builder(operator).map_err(error)?;
                stateful |= builder().map_err(error)?.is_stateful();
                Ok(builder)
            })
            .collect::<Result<Vec<_>, StartError>>()?;
        Ok((builders, stateful))
    }

    fn operator_builder(&self, operator: &OperatorConfig) -> Result<OperatorBuilder, String> {
        let operator = operator.clone();
        Ok(match &operator {
            OperatorConfig::Window(window) => {
                let window = window.clone();
                Arc::new(move || Ok(Box::new(super::window::WindowOperator::new(&window)) as _))
            }
            OperatorConfig::Aggregate(aggregate) => {
                let aggregate = aggregate.clone();
                Arc::new(move || {
                    Ok(Box::new(super::window::AggregateOperator::new(&aggregate)) as _)
                })
            }
            OperatorConfig::Reduce(reduce) => {
                let reduce = reduce.clone();
                Arc::new(move || Ok(Box::new(super::window::ReduceOperator::new(&reduce)) as _))
            }
            OperatorConfig::Custom { name, params } => {
                let factory = self
                    .operators
                    .get(name)
                    .ok_or_else(|| format!("no operator is registered as {name:?}"))?
                    .clone();
                let params = params.clone();
                Arc::new(move || factory(&params))
            }
            _ => Arc::new(move || {
                super::operators::build_stateless(&operator)
                    .ok_or_else(|| format!("{} is not a stateless operator", operator.type_name()))
            }),
        })
    }

    /// The pipeline's sink; `topic_sink` makes the topic sink (it needs the
    /// runtime's producers).
    pub(crate) fn build_sink(
        &self,
        pipeline: &PipelineConfig,
        topic_sink: impl FnOnce(&str) -> Option<Box<dyn Sink>>,
    ) -> Result<Box<dyn Sink>, StartError> {
        let error = |message: String| StartError::Pipeline {
            pipeline: pipeline.name.clone(),
            stage: "sink".to_owned(),
            message,
        };
        match &pipeline.sink {
            SinkConfig::Topic { topic } => {
                topic_sink(topic).ok_or_else(|| error(format!("no topic {topic}")))
            }
            SinkConfig::Sled(sled) => super::sink::SledTableSink::open(sled)
                .map(|sink| Box::new(sink) as Box<dyn Sink>)
                .map_err(|sink_error| error(sink_error.message)),
            SinkConfig::JsonLines { path } => super::sink::JsonLinesSink::open(path)
                .map(|sink| Box::new(sink) as Box<dyn Sink>)
                .map_err(|sink_error| error(sink_error.message)),
            SinkConfig::Stdout => Ok(Box::new(super::sink::StdoutSink::new())),
            SinkConfig::Custom { name, params } => {
                let factory = self
                    .sinks
                    .get(name)
                    .ok_or_else(|| error(format!("no sink is registered as {name:?}")))?;
                factory(params).map_err(error)
            }
        }
    }
}
