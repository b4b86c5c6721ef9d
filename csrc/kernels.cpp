// The cells' pointwise kernels for one instruction-set level (RNNCORE_ISA, set by CMake).
#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/rnn.h"
#include "smallgemm.h"

namespace rnncore {
namespace RNNCORE_NS {

template <class Cell, class T>
CellSpec<T> make_spec() {
  CellSpec<T> s;
  s.gates = Cell::gates;
  s.extra_cols = Cell::extra_cols;
  s.has_c = Cell::has_c;
  s.keeps_cache = Cell::keeps_cache;
  s.separate_rec_grad = Cell::separate_rec_grad;
  s.has_b_hn = Cell::has_b_hn;
  s.num_blocks = Cell::num_blocks;
  for (int k = 0; k < Cell::num_blocks; ++k) s.blocks[k] = Cell::blocks[k];
  s.forward = &Cell::template forward<T>;
  s.backward = &Cell::template backward<T>;
  return s;
}

template <class T>
CellSpec<T> cell_spec(CellKind kind) {
  switch (kind) {
    case CellKind::rnn_tanh: return make_spec<SimpleRNNCell<Tanh>, T>();
    case CellKind::rnn_relu: return make_spec<SimpleRNNCell<Relu>, T>();
    case CellKind::lstm: return make_spec<LSTMCell, T>();
    case CellKind::gru: return make_spec<GRUCell<false>, T>();
    case CellKind::gru_after: return make_spec<GRUCell<true>, T>();
  }
  return {};
}

template <class T>
Kernels<T> kernels(CellKind kind) {
  Kernels<T> k;
  k.cell = cell_spec<T>(kind);
  k.step.packed_size = &SmallGemm<T>::packed_size;
  k.step.pack = &SmallGemm<T>::pack;
  k.step.gemm = &SmallGemm<T>::gemm;
  k.step.gemm_nt = &SmallGemm<T>::gemm_nt;
  k.step.gemm_nn = &SmallGemm<T>::gemm_nn;
  return k;
}

template Kernels<float> kernels<float>(CellKind);
template Kernels<double> kernels<double>(CellKind);

}  // namespace RNNCORE_NS
}  // namespace rnncore
