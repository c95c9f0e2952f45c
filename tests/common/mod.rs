#![allow(dead_code)]
pub mod gen;
pub mod sim;
