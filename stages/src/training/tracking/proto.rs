//! The protocol buffers of a TensorBoard event file, derived by hand with prost's macros (no
//! `protoc` at build time): only the messages and fields this crate writes and reads, under
//! their upstream names and field numbers (tensorflow/core/util/event.proto,
//! tensorflow/core/framework/summary.proto, tensor.proto, tensor_shape.proto,
//! tensorboard/plugins/hparams/plugin_data.proto and google/protobuf/struct.proto). Fields not
//! listed are skipped by prost when reading, as protobuf requires.

use std::collections::BTreeMap;

/// `tensorflow.Event`: one record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "event::What", tags = "3, 5")]
    pub what: Option<event::What>,
}

pub mod event {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum What {
        /// `brain.Event:2`, the first record of every file.
        #[prost(string, tag = "3")]
        FileVersion(String),
        #[prost(message, tag = "5")]
        Summary(super::Summary),
    }
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    #[prost(oneof = "summary_value::Value", tags = "2, 8")]
    pub value: Option<summary_value::Value>,
}

pub mod summary_value {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(float, tag = "2")]
        SimpleValue(f32),
        #[prost(message, tag = "8")]
        Tensor(super::TensorProto),
    }
}

/// `tensorflow.SummaryMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.TensorProto`, as far as an empty float vector needs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// `tensorflow.DataType`: 1 is `DT_FLOAT`.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
}

pub const DT_FLOAT: i32 = 1;

/// `tensorflow.TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<TensorShapeDim>,
}

/// `tensorflow.TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeDim {
    #[prost(int64, tag = "1")]
    pub size: i64,
}

/// `tensorboard.hparams.HParamsPluginData`: what a run says to the HParams tab.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    pub version: i32,
    #[prost(oneof = "hparams_plugin_data::Data", tags = "3, 4")]
    pub data: Option<hparams_plugin_data::Data>,
}

pub mod hparams_plugin_data {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Data {
        #[prost(message, tag = "3")]
        SessionStartInfo(super::SessionStartInfo),
        #[prost(message, tag = "4")]
        SessionEndInfo(super::SessionEndInfo),
    }
}

/// `tensorboard.hparams.SessionStartInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionStartInfo {
    #[prost(btree_map = "string, message", tag = "1")]
    pub hparams: BTreeMap<String, ProtoValue>,
    #[prost(string, tag = "4")]
    pub group_name: String,
    #[prost(double, tag = "5")]
    pub start_time_secs: f64,
}

/// `tensorboard.hparams.SessionEndInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionEndInfo {
    /// `tensorboard.hparams.Status`: 1 is `STATUS_SUCCESS`.
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(double, tag = "2")]
    pub end_time_secs: f64,
}

pub const STATUS_SUCCESS: i32 = 1;

/// `google.protobuf.Value`, the kinds a hyperparameter takes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoValue {
    #[prost(oneof = "proto_value::Kind", tags = "2, 3, 4")]
    pub kind: Option<proto_value::Kind>,
}

pub mod proto_value {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(double, tag = "2")]
        NumberValue(f64),
        #[prost(string, tag = "3")]
        StringValue(String),
        #[prost(bool, tag = "4")]
        BoolValue(bool),
    }
}
