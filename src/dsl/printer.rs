//! `Model` back to `.snn` text.
//!
//! The output is canonical: options are printed only when they differ from
//! the parser's defaults, in a fixed order, so that `parse(to_snn(m)) == m`.

use std::fmt::{self, Display, Formatter};

use super::{BATCHNORM_EPS, BATCHNORM_MOMENTUM};
use crate::model::{Encoding, Layer, LayerKind, MaxPoolRule, Model, NeuronOpts, Reset};

pub fn to_snn(model: &Model) -> String {
    Snn(model).to_string()
}

struct Snn<'a>(&'a Model);

/// Debug formatting of `f64` is the shortest text that parses back to the
/// same value, and switches to exponent form for very small and large
/// numbers instead of printing hundreds of digits.
struct Num(f64);

impl Display for Num {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Display for Snn<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let model = self.0;
        writeln!(f, "model {}", model.name)?;

        f.write_str("input ")?;
        for (i, d) in model.input.shape.iter().enumerate() {
            if i > 0 {
                f.write_str("x")?;
            }
            write!(f, "{d}")?;
        }
        match model.input.encoding {
            Encoding::Direct => {}
            Encoding::Poisson { seed } => {
                f.write_str(" encoding=poisson")?;
                if seed != 0 {
                    write!(f, " seed={seed}")?;
                }
            }
            Encoding::Events => f.write_str(" encoding=events")?,
        }
        writeln!(f)?;

        if model.neuron != NeuronOpts::default() {
            f.write_str("neuron")?;
            neuron_opts(f, &model.neuron)?;
            writeln!(f)?;
        }

        layers(f, &model.layers, 0)
    }
}

fn layers(f: &mut Formatter<'_>, layers: &[Layer], depth: usize) -> fmt::Result {
    let indent = "    ".repeat(depth);
    for layer in layers {
        write!(f, "{indent}{}", layer.kind.keyword())?;
        match &layer.kind {
            LayerKind::Conv2d {
                out,
                kernel,
                stride,
                padding,
                bias,
            } => {
                write!(f, " {out}")?;
                if *kernel != 3 {
                    write!(f, " kernel={kernel}")?;
                }
                if *stride != 1 {
                    write!(f, " stride={stride}")?;
                }
                if *padding != kernel / 2 {
                    write!(f, " padding={padding}")?;
                }
                if !bias {
                    f.write_str(" bias=false")?;
                }
            }
            LayerKind::Linear { out, bias } => {
                write!(f, " {out}")?;
                if !bias {
                    f.write_str(" bias=false")?;
                }
            }
            LayerKind::BatchNorm { eps, momentum } => {
                if *eps != BATCHNORM_EPS {
                    write!(f, " eps={}", Num(*eps))?;
                }
                if *momentum != BATCHNORM_MOMENTUM {
                    write!(f, " momentum={}", Num(*momentum))?;
                }
            }
            LayerKind::AvgPool {
                kernel,
                stride,
                padding,
            } => pool(f, *kernel, *stride, *padding)?,
            LayerKind::MaxPool {
                kernel,
                stride,
                padding,
                rate_rule,
            } => {
                pool(f, *kernel, *stride, *padding)?;
                if *rate_rule != MaxPoolRule::default() {
                    write!(f, " rate_rule={}", rate_rule.name())?;
                }
            }
            LayerKind::Flatten => {}
            LayerKind::Dropout { p } => write!(f, " {}", Num(*p))?,
            LayerKind::Neuron { opts, .. } => neuron_opts(f, opts)?,
            LayerKind::Residual { main, shortcut } => {
                writeln!(f, " {{")?;
                self::layers(f, main, depth + 1)?;
                if !shortcut.is_empty() {
                    writeln!(f, "{indent}}} shortcut {{")?;
                    self::layers(f, shortcut, depth + 1)?;
                }
                write!(f, "{indent}}}")?;
            }
        }
        writeln!(f)?;
    }
    Ok(())
}

/// A pool's kernel, and its stride and padding where not the defaults.
fn pool(f: &mut Formatter<'_>, kernel: usize, stride: usize, padding: usize) -> fmt::Result {
    write!(f, " {kernel}")?;
    if stride != kernel {
        write!(f, " stride={stride}")?;
    }
    if padding != 0 {
        write!(f, " padding={padding}")?;
    }
    Ok(())
}

fn neuron_opts(f: &mut Formatter<'_>, o: &NeuronOpts) -> fmt::Result {
    if let Some(v) = o.lambda {
        write!(f, " lambda={}", Num(v))?;
    }
    if let Some(v) = o.theta {
        write!(f, " theta={}", Num(v))?;
    }
    if let Some(r) = o.reset {
        f.write_str(match r {
            Reset::Soft => " reset=soft",
            Reset::Hard => " reset=hard",
        })?;
    }
    if let Some(v) = o.v_reset {
        write!(f, " v_reset={}", Num(v))?;
    }
    if let Some(b) = o.detach_reset {
        write!(f, " detach_reset={b}")?;
    }
    if let Some(s) = o.surrogate {
        write!(f, " surrogate={}", s.name())?;
    }
    if let Some(v) = o.alpha {
        write!(f, " alpha={}", Num(v))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_through_text() {
        for x in [0.1, 1e-7, 0.30000000000000004, 1.0, -0.5, 1e300, 5e-324] {
            let text = Num(x).to_string();
            assert_eq!(text.parse::<f64>().unwrap(), x, "{text}");
        }
    }
}
