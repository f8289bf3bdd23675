"""The course's reference models on cnnkernels' layers (``cnnkernels.nn``
convolutions and pooling; torch.nn for batch norm, linear layers, dropout
and activations that cannot be fused). Where torchvision has the model,
the builder, modules, parameter count and state_dict keys are
torchvision's, so its weights load unchanged:

    model = cnnkernels.models.resnet50()
    model.load_state_dict(torchvision_resnet50_state_dict)

Builders: lenet5, alexnet, vgg16, resnet18, resnet34, resnet50, googlenet,
mobilenet_v1, mobilenet_v2, unet, facenet_embedding, yolo.
``plain_torch_copy(model)``: the same model on plain torch ops, the
reference to compare against."""

from cnnkernels.models._plain_torch import plain_torch_copy
from cnnkernels.models.alexnet import AlexNet, alexnet
from cnnkernels.models.facenet import FaceNetEmbedding, facenet_embedding
from cnnkernels.models.googlenet import GoogLeNet, GoogLeNetOutputs, googlenet
from cnnkernels.models.lenet import LeNet5, lenet5
from cnnkernels.models.mobilenet import MobileNetV1, MobileNetV2, mobilenet_v1, mobilenet_v2
from cnnkernels.models.resnet import ResNet, resnet18, resnet34, resnet50
from cnnkernels.models.unet import UNet, unet
from cnnkernels.models.vgg import VGG, vgg16
from cnnkernels.models.yolo import YOLO, yolo, yolo_loss

__all__ = ["VGG", "YOLO", "AlexNet", "FaceNetEmbedding", "GoogLeNet", "GoogLeNetOutputs",
           "LeNet5", "MobileNetV1", "MobileNetV2", "ResNet", "UNet", "alexnet",
           "facenet_embedding", "googlenet", "lenet5", "mobilenet_v1", "mobilenet_v2",
           "plain_torch_copy", "resnet18", "resnet34", "resnet50", "unet", "vgg16", "yolo",
           "yolo_loss"]
