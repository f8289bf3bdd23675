// Bindings of the metric launchers (see binding.h).
#include "binding.h"
#include "cnnk/metric.h"

namespace cnnk::pyext {

template <>
struct PyStruct<TripletGeometry> : std::true_type {
  static TripletGeometry read(const Fields& f) {
    return {CNNK_FIELD(N),      CNNK_FIELD(D),    CNNK_FIELD(distance),  CNNK_FIELD(p),
            CNNK_FIELD(eps),    CNNK_FIELD(margin), CNNK_FIELD(swap),    CNNK_FIELD(reduction),
            CNNK_FIELD(indexed), CNNK_FIELD(chunk)};
  }
};

template <>
struct PyStruct<RouteGeometry> : std::true_type {
  static RouteGeometry read(const Fields& f) { return {CNNK_FIELD(N), CNNK_FIELD(M), CNNK_FIELD(D)}; }
};

template <>
struct PyStruct<DistanceMatrixGeometry> : std::true_type {
  static DistanceMatrixGeometry read(const Fields& f) {
    return {CNNK_FIELD(N), CNNK_FIELD(M), CNNK_FIELD(D), CNNK_FIELD(distance), CNNK_FIELD(eps)};
  }
};

template <>
struct PyStruct<MiningGeometry> : std::true_type {
  static MiningGeometry read(const Fields& f) { return {CNNK_FIELD(N)}; }
};

CNNK_BINDINGS(metric, m) {
  m.structure<TripletGeometry>("TripletGeometry");
  CNNK_LAUNCHER(m, triplet_loss_forward);
  CNNK_LAUNCHER(m, triplet_loss_backward);
  m.launcher("triplet_loss_forward_backward", &cpu::triplet_loss_forward_backward, nullptr);
  m.structure<RouteGeometry>("RouteGeometry");
  CNNK_LAUNCHER(m, route_rows);
  m.structure<DistanceMatrixGeometry>("DistanceMatrixGeometry");
  CNNK_LAUNCHER(m, distance_matrix_forward);
  CNNK_LAUNCHER(m, distance_matrix_backward);
  m.structure<MiningGeometry>("MiningGeometry");
  CNNK_LAUNCHER(m, batch_hard_mining);
}

}  // namespace cnnk::pyext
