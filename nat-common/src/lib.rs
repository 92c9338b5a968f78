//! Types and pure logic shared by the kernel programs and user space.
//!
//! Everything that goes into a BPF map is `#[repr(C)]` with explicit padding
//! so both sides agree on the layout byte for byte. Addresses and ports in map
//! keys and values are kept in network byte order, exactly as they sit in the
//! packet, so the datapath never converts.
#![no_std]

pub mod blocks;
pub mod config;
pub mod counters;
pub mod csum;
pub mod deterministic;
pub mod event_rate;
pub mod flow;
pub mod forward;
pub mod headers;
pub mod hosts;
pub mod mapping;
pub mod names;
pub mod nat_event;
pub mod port_forward;
pub mod probe;
pub mod seen_word;
pub mod sweep;
pub mod tcp_state;

#[cfg(feature = "user")]
mod pod {
    use crate::{
        blocks::{Block, BlockKey, HostBlocks},
        config::{Config, PoolAddr},
        deterministic::DetPrefix,
        flow::{FlowKey, Session},
        hosts::HostEntry,
        mapping::{EndpointKey, Mapping, Owner, PeerKey},
        nat_event::NatEvent,
        port_forward::ForwardTarget,
        sweep::SweepControl,
    };

    // SAFETY: all of these are repr(C), Copy, made of integers only, with
    // padding spelled out as fields, so every bit pattern is valid.
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Session {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for PoolAddr {}
    unsafe impl aya::Pod for SweepControl {}
    unsafe impl aya::Pod for ForwardTarget {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for Mapping {}
    unsafe impl aya::Pod for Owner {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for HostEntry {}
    unsafe impl aya::Pod for BlockKey {}
    unsafe impl aya::Pod for Block {}
    unsafe impl aya::Pod for HostBlocks {}
    unsafe impl aya::Pod for DetPrefix {}
    unsafe impl aya::Pod for NatEvent {}
}
