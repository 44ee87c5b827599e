//! The CIFAR ResNets of He et al. (2016), section 4.2: a 3×3 stem, three
//! stages of basic blocks at 16, 32 and 64 channels (the last two start
//! with stride 2), global average pooling and one dense layer; depth
//! 6n + 2. Shortcuts are identities, or a 1×1 convolution with batch norm
//! where the shape changes (option B). Layer names are torchvision's
//! (`conv1`, `bn1`, `layer2.0.downsample.0`, `fc`), so the parameters are
//! named as in a PyTorch `state_dict` of the same model.

use super::layer::{Layer, Node};
use super::spec::ModelSpec;

fn conv(filters: usize, kernel: usize, stride: usize) -> Layer {
    Layer::Conv2d {
        filters,
        kernel,
        stride,
        padding: kernel / 2,
        dilation: 1,
        bias: false,
    }
}

fn bn() -> Layer {
    Layer::BatchNorm2d {
        eps: 1e-5,
        momentum: 0.1,
    }
}

impl ModelSpec {
    /// ResNet-`depth` (20, 32, 56, ...: `depth = 6n + 2`).
    ///
    /// # Panics
    /// When `depth` is not `6n + 2` with `n >= 1` (the presets are 20, 32
    /// and 56).
    pub fn resnet(depth: usize, classes: usize) -> Self {
        assert!(
            depth >= 8 && (depth - 2).is_multiple_of(6),
            "ResNet depth is 6n + 2"
        );
        let blocks = (depth - 2) / 6;
        let mut layers = vec![
            Node::named("conv1", &["input"], conv(16, 3, 1)),
            Node::named("bn1", &[], bn()),
            Node::named("relu", &[], Layer::Relu),
        ];
        let mut prev = "relu".to_string();
        let mut channels = 16;
        for stage in 1..=3 {
            let width = 16 << (stage - 1);
            for b in 0..blocks {
                let stride = if stage > 1 && b == 0 { 2 } else { 1 };
                let at = |part: &str| format!("layer{stage}.{b}.{part}");
                layers.push(Node::named(at("conv1"), &[&prev], conv(width, 3, stride)));
                layers.push(Node::named(at("bn1"), &[], bn()));
                layers.push(Node::named(at("relu1"), &[], Layer::Relu));
                layers.push(Node::named(at("conv2"), &[], conv(width, 3, 1)));
                layers.push(Node::named(at("bn2"), &[], bn()));
                let shortcut = if stride != 1 || channels != width {
                    layers.push(Node::named(
                        at("downsample.0"),
                        &[&prev],
                        conv(width, 1, stride),
                    ));
                    layers.push(Node::named(at("downsample.1"), &[], bn()));
                    at("downsample.1")
                } else {
                    prev.clone()
                };
                layers.push(Node::named(at("add"), &[&at("bn2"), &shortcut], Layer::Add));
                let out = format!("layer{stage}.{b}");
                layers.push(Node::named(&out, &[], Layer::Relu));
                prev = out;
                channels = width;
            }
        }
        layers.push(Node::named("avgpool", &[&prev], Layer::GlobalAvgPool));
        layers.push(Node::named(
            "fc",
            &[],
            Layer::Dense {
                units: classes,
                bias: true,
            },
        ));
        ModelSpec {
            name: format!("resnet{depth}"),
            layers,
            output: None,
        }
    }
}
