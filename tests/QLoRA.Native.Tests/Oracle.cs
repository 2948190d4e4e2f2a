namespace QLoRA.Native.Tests;

/// <summary>
/// Independent expectations for the tests: published tables (FORMATS.md), the dynamic map built
/// from its definition, nearest-code search in float64, random data. Nothing here calls the core.
/// </summary>
internal static class Oracle
{
    /// <summary>bitsandbytes' NF4 table, as published (FORMATS.md).</summary>
    public static readonly double[] Nf4 =
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ];

    /// <summary>bitsandbytes' FP4 values by 4-bit pattern, divided by 12 (FORMATS.md).</summary>
    public static readonly double[] Fp4 =
        new double[] { 0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3 }.Select(v => v / 12).ToArray();

    /// <summary>Symmetric absmax Int4: (i - 8) / 7 (qlora.h; code 0 is never produced).</summary>
    public static readonly double[] Int4 = Enumerable.Range(0, 16).Select(i => (i - 8) / 7.0).ToArray();

    public static double[] Table(QLoraQuantType type) => type switch
    {
        QLoraQuantType.Nf4 => Nf4,
        QLoraQuantType.Fp4 => Fp4,
        QLoraQuantType.Int4 => Int4,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };

    /// <summary>
    /// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) from its definition in
    /// FORMATS.md, with PyTorch's float32 linspace.
    /// </summary>
    public static float[] DynamicMap()
    {
        var values = new List<float>();
        for (int i = 0; i < 7; i++)
        {
            int n = (1 << i) + 1;
            float start = 0.1f, end = 1.0f, step = (end - start) / (n - 1);
            var points = new float[n];
            for (int j = 0; j < n; j++) points[j] = j < n / 2 ? start + step * j : end - step * (n - 1 - j);
            float scale = (float)Math.Pow(10, i - 6);
            for (int j = 0; j + 1 < n; j++)
            {
                float mean = (points[j] + points[j + 1]) / 2;
                values.Add(scale * mean);
                values.Add(-scale * mean);
            }
        }
        values.Add(0f);
        values.Add(1f);
        values.Sort();
        return [.. values];
    }

    /// <summary>
    /// Indices of the table entries nearest to <paramref name="x"/> in float64: one, or two when x lies
    /// within <paramref name="tieTolerance"/> of the midpoint between them (fp32 rounding may pick either).
    /// </summary>
    public static IReadOnlyList<int> Nearest(IReadOnlyList<double> table, double x, double tieTolerance = 1e-6)
    {
        double best = table.Min(v => Math.Abs(v - x));
        return Enumerable.Range(0, table.Count).Where(k => Math.Abs(table[k] - x) <= best + 2 * tieTolerance).ToList();
    }

    /// <summary>
    /// The largest error of rounding <paramref name="v"/> to the nearest entry of a sorted map: half the gap
    /// between the entries that bracket it, or its distance to the end it lies beyond (the signed dynamic map
    /// stops at -0.9929, so -1 cannot be represented exactly).
    /// </summary>
    public static double RoundingBound(float[] sortedMap, double v)
    {
        if (v <= sortedMap[0]) return sortedMap[0] - v;
        if (v >= sortedMap[^1]) return v - sortedMap[^1];
        for (int i = 0; i + 1 < sortedMap.Length; i++)
            if (v >= sortedMap[i] && v <= sortedMap[i + 1]) return (sortedMap[i + 1] - (double)sortedMap[i]) / 2;
        throw new ArgumentException($"{v} is not comparable with the map");
    }

    /// <summary>Standard normal values (Box-Muller) from a fixed seed.</summary>
    public static float[] Normal(int n, int seed)
    {
        var rng = new Random(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            x[i] = (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return x;
    }

    /// <summary>float -> bfloat16 bits, round to nearest even (finite inputs).</summary>
    public static ushort ToBf16(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    public static float FromBf16(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);
}
