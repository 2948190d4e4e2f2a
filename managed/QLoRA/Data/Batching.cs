using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Data;

/// <summary>A batch as tensors: right-padded ids and labels [B, T] (int64) on the model's device.</summary>
/// <param name="Ids">Token ids [B, T], padding = the pad id.</param>
/// <param name="Labels">Labels [B, T], <see cref="ExampleTokenizer.IgnoreIndex"/> on prompt and padding positions.</param>
/// <param name="Tokens">Real (non-padding) tokens in the batch.</param>
/// <param name="TrainTokens">Positions that count in the loss (after the shift).</param>
public sealed record Batch(Tensor Ids, Tensor Labels, long Tokens, long TrainTokens) : IDisposable
{
    /// <summary>Frees the tensors.</summary>
    public void Dispose()
    {
        Ids.Dispose();
        Labels.Dispose();
    }
}

/// <summary>Batch order (deterministic per seed and epoch), holdout splits and collation.</summary>
public static class Batching
{
    /// <summary>The seed of <see cref="HoldOut{T}"/>: fixed, so that runs with different seeds evaluate on the same examples.</summary>
    public const int HoldOutSeed = 20231128;

    /// <summary>
    /// Splits <paramref name="items"/> into train and held-out parts: the held-out part is <paramref name="evalCount"/>
    /// items chosen by a fixed-seed permutation; both parts keep the original order.
    /// </summary>
    public static (List<T> Train, List<T> Eval) HoldOut<T>(IReadOnlyList<T> items, int evalCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(evalCount);
        if (evalCount >= items.Count)
            throw new ArgumentException($"cannot hold out {evalCount} of {items.Count} examples for evaluation and still train", nameof(evalCount));
        var perm = Permutation(items.Count, new Random(HoldOutSeed));
        var held = new bool[items.Count];
        for (int i = 0; i < evalCount; i++) held[perm[i]] = true;
        var train = new List<T>(items.Count - evalCount);
        var eval = new List<T>(evalCount);
        for (int i = 0; i < items.Count; i++) (held[i] ? eval : train).Add(items[i]);
        return (train, eval);
    }

    /// <summary>
    /// The batches of one epoch as lists of example indices. The order is a permutation seeded by
    /// (<paramref name="seed"/>, <paramref name="epoch"/>); with <paramref name="groupByLength"/> the permutation
    /// is cut into mega-batches of 50 batches, each sorted by length before it is cut into batches (as Hugging
    /// Face's LengthGroupedSampler does: similar lengths share a batch, so less padding is computed), and the
    /// batches of a mega-batch are then taken in a seeded random order. Hugging Face runs them longest first;
    /// that feeds the model 50 steps of steadily shorter examples, which visibly drifts a short run (its loss
    /// climbs at the end of every mega-batch), so the order is shuffled instead.
    /// </summary>
    public static List<int[]> EpochBatches(IReadOnlyList<int> lengths, int batchSize, int seed, int epoch, bool groupByLength)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        if (lengths.Count == 0) throw new ArgumentException("no examples to batch", nameof(lengths));
        var rng = new Random(unchecked(seed * 1000003 + epoch));
        var perm = Permutation(lengths.Count, rng);
        var batches = new List<int[]>((perm.Length + batchSize - 1) / batchSize);
        int mega = groupByLength ? batchSize * 50 : perm.Length;
        for (int start = 0; start < perm.Length; start += mega)
        {
            var slice = perm.AsSpan(start, Math.Min(mega, perm.Length - start)).ToArray();
            if (groupByLength)
                slice = slice.Select((idx, pos) => (idx, pos)).OrderByDescending(t => lengths[t.idx]).ThenBy(t => t.pos).Select(t => t.idx).ToArray();
            var chunk = new List<int[]>();
            for (int b = 0; b < slice.Length; b += batchSize)
                chunk.Add(slice.AsSpan(b, Math.Min(batchSize, slice.Length - b)).ToArray());
            if (groupByLength)
                foreach (int i in Permutation(chunk.Count, rng)) batches.Add(chunk[i]);
            else
                batches.AddRange(chunk);
        }
        return batches;
    }

    // Fisher-Yates with System.Random(seed): the seeded algorithm is fixed across .NET versions and platforms.
    private static int[] Permutation(int n, Random rng)
    {
        var p = new int[n];
        for (int i = 0; i < n; i++) p[i] = i;
        for (int i = n - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
    }

    /// <summary>Right-pads the examples to the longest one and makes int64 tensors on <paramref name="device"/>.</summary>
    public static Batch Collate(IReadOnlyList<TokenizedExample> examples, int padId, Device? device = null)
    {
        if (examples.Count == 0) throw new ArgumentException("an empty batch", nameof(examples));
        int t = examples.Max(e => e.Length);
        var ids = new long[examples.Count * t];
        var labels = new long[examples.Count * t];
        long tokens = 0, trainTokens = 0;
        for (int b = 0; b < examples.Count; b++)
        {
            var e = examples[b];
            for (int i = 0; i < t; i++)
            {
                bool real = i < e.Length;
                ids[b * t + i] = real ? e.Ids[i] : padId;
                labels[b * t + i] = real ? e.Labels[i] : ExampleTokenizer.IgnoreIndex;
            }
            tokens += e.Length;
            trainTokens += e.TrainTokens;
        }
        var idsT = torch.tensor(ids, [examples.Count, t], ScalarType.Int64);
        var labelsT = torch.tensor(labels, [examples.Count, t], ScalarType.Int64);
        if (device is not null && device.type != DeviceType.CPU)
        {
            using (idsT) using (labelsT)
                return new Batch(idsT.to(device), labelsT.to(device), tokens, trainTokens);
        }
        return new Batch(idsT, labelsT, tokens, trainTokens);
    }
}
